"""Webhook secrets rotate without a restart and with overlap: ``secret`` may be a list
and ``secret_file`` one secret per line; any of them verifies; a reload applies them;
none is ever shown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import ConfigError, load_config
from proxy.emulator.webhooks import webhook_hub
from tests.conftest import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_SUBSCRIPTION_KEY,
    ProxyFactory,
    RunningEmulator,
    RunningProxy,
    free_port,
)
from tests.test_config import run_cli
from tests.test_webhooks_config import CREDENTIALS, HOOK, parse
from tests.test_webhooks_loop import register
from tests.test_webhooks_relay import start_app
from tests.webhook_peers import LegacyApp, eventually, payment_event, vipps_headers

OLD = "old-webhook-secret-0000000000000001"
NEW = "new-webhook-secret-0000000000000002"
INTERVAL = 0.2  # reload_interval, seconds


def test_secret_may_be_a_list_newest_first() -> None:
    (hook,) = parse({**HOOK, "secret": [NEW, OLD]}).webhooks
    assert [s.reveal() for s in hook.secrets] == [NEW, OLD]
    assert NEW not in repr(hook)
    assert OLD not in repr(hook)


def test_secret_file_holds_one_secret_per_line(tmp_path: Path) -> None:
    path = tmp_path / "secrets"
    path.write_text(f"{NEW}\n\n  {OLD}  \n")
    hook = {k: v for k, v in HOOK.items() if k != "secret"}
    (parsed,) = parse({**hook, "secret_file": str(path)}).webhooks
    assert [s.reveal() for s in parsed.secrets] == [NEW, OLD]


@pytest.mark.parametrize(
    ("secret", "key"),
    [
        ([], "webhooks[0].secret"),
        ([NEW, 5], "webhooks[0].secret[1]"),
        ([" "], "webhooks[0].secret[0]"),
    ],
)
def test_a_bad_secret_list_names_its_key(secret: Any, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse({**HOOK, "secret": secret})
    assert err.value.key == key


def test_check_masks_every_secret_of_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(
        CREDENTIALS + f'\n[[webhooks]]\npath = "/hook"\nsecret = ["{NEW}", "{OLD}"]\n'
        'deliver_to = "http://127.0.0.1:9/"\n'
    )
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert '"path": "/hook"' in result.stdout
    assert NEW not in result.stdout + result.stderr
    assert OLD not in result.stdout + result.stderr


def config_text(emulator: RunningEmulator, secrets: Path, store: Path, app_port: int) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = 0
shutdown_timeout = 2
reload_interval = {INTERVAL}

[credentials.main]
token_url = "{emulator.token_url}"
client_id = "{DEMO_CLIENT_ID}"
client_secret = "{DEMO_CLIENT_SECRET}"
subscription_key = "{DEMO_SUBSCRIPTION_KEY}"

[[webhooks]]
path = "/webhooks/vipps"
kind = "vipps-webhook"
secret_file = "{secrets}"
deliver_to = "http://127.0.0.1:{app_port}/vipps/events"

[store]
path = "{store}"
"""


class Vipps:
    """Vipps sending each event to every registration of one URL, each copy signed with
    that registration's secret, until stopped."""

    def __init__(self, proxy: RunningProxy) -> None:
        self.proxy = proxy
        self.registrations = [OLD]
        self.statuses: list[tuple[str, int]] = []
        self.sent: list[bytes] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        host, port = self.proxy.address
        async with aiohttp.ClientSession() as client:
            while not self.stop.is_set():
                body = payment_event(f"rotation-{len(self.sent)}")
                self.sent.append(body)
                for secret in list(self.registrations):
                    headers = vipps_headers(
                        body, f"{host}:{port}", "/webhooks/vipps", secret=secret
                    )
                    async with client.post(
                        self.proxy.at("/webhooks/vipps"), data=body, headers=headers
                    ) as response:
                        self.statuses.append((secret, response.status))

    async def more(self, count: int) -> None:
        seen = len(self.sent)
        await eventually(lambda: len(self.sent) > seen + count, f"{count} more events")


async def test_a_vipps_style_rotation_while_events_flow_gives_no_401(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """Register the new webhook with ``webhooks register`` (its secret joins the file,
    first; the proxy reloads it), Vipps sends every event to both registrations, delete
    the old one (its secret leaves the file): every copy gets 200, every event reaches
    the app once, no restart is asked for and no secret is logged."""
    port = free_port()
    secrets = tmp_path / "webhook-secrets"
    secrets.write_text(OLD + "\n")
    path = tmp_path / "proxy.toml"
    path.write_text(config_text(emulator, secrets, tmp_path / "events.sqlite3", port))
    proxy = await start_proxy(load_config(path))
    app = LegacyApp()
    await start_app(aiohttp_server, app, port)
    vipps = Vipps(proxy)
    sending = asyncio.create_task(vipps.run())
    try:
        await vipps.more(5)
        registered = await register(path, "https://shop.example.com/webhooks/vipps", secrets)
        assert registered.returncode == 0, registered.stderr
        (registration,) = webhook_hub(emulator.server.app).registrations.values()
        new = registration.secret.reveal()
        assert secrets.read_text().splitlines() == [new, OLD]  # the new one joins, first
        await eventually(lambda: len(proxy.logs.events("config_reloaded")) == 1, "a reload")
        vipps.registrations.append(new)  # Vipps sends to both registrations
        await vipps.more(5)
        vipps.registrations.remove(OLD)  # DELETE /webhooks/v1/webhooks/{old id}
        await vipps.more(5)
        secrets.write_text(new + "\n")
        await eventually(lambda: len(proxy.logs.events("config_reloaded")) == 2, "a reload")
        await vipps.more(5)
    finally:
        vipps.stop.set()
        await sending
    assert {status for _, status in vipps.statuses} == {200}
    assert {who for who, _ in vipps.statuses} == {OLD, new}
    await eventually(lambda: len(app.received) >= len(vipps.sent), "every event delivered")
    assert sorted(app.bodies()) == sorted(vipps.sent)
    assert proxy.logs.events("reload_needs_restart") == []
    assert OLD not in proxy.logs.text()
    assert new not in proxy.logs.text()


async def test_a_removed_secret_no_longer_verifies_after_the_reload(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """The overlap ends when the old secret leaves the file: its signature gets 401."""
    port = free_port()
    secrets = tmp_path / "webhook-secrets"
    secrets.write_text(f"{NEW}\n{OLD}\n")
    path = tmp_path / "proxy.toml"
    path.write_text(config_text(emulator, secrets, tmp_path / "events.sqlite3", port))
    proxy = await start_proxy(load_config(path))
    await start_app(aiohttp_server, LegacyApp(), port)
    host, proxy_port = proxy.address

    async def send(secret: str, reference: str) -> int:
        body = payment_event(reference)
        headers = vipps_headers(body, f"{host}:{proxy_port}", "/webhooks/vipps", secret=secret)
        async with (
            aiohttp.ClientSession() as client,
            client.post(proxy.at("/webhooks/vipps"), data=body, headers=headers) as response,
        ):
            return response.status

    assert (await send(OLD, "before-1"), await send(NEW, "before-2")) == (200, 200)
    secrets.write_text(NEW + "\n")
    await eventually(lambda: len(proxy.logs.events("config_reloaded")) == 1, "a reload")
    assert (await send(OLD, "after-1"), await send(NEW, "after-2")) == (401, 200)
