"""The whole loop: ``vipps-proxy webhooks register`` at the emulator's Webhooks API, the
emulator's signed ePayment events through the proxy to the legacy app; and the CLI's
``list`` and ``retry`` on the store."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.config import load_config
from proxy.webhooks.store import Store
from tests.conftest import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_MSN,
    DEMO_SUBSCRIPTION_KEY,
    ProxyFactory,
    RunningEmulator,
    free_port,
    make_config,
)
from tests.processes import read_until, running_demo
from tests.test_config import run_cli
from tests.webhook_peers import HOOK, LegacyApp, eventually, stored


def write_cli_config(tmp_path: Path, emulator: RunningEmulator) -> Path:
    path = tmp_path / "proxy.toml"
    path.write_text(
        f"""
[credentials.main]
token_url = "{emulator.token_url}"
client_id = "{DEMO_CLIENT_ID}"
client_secret = "{DEMO_CLIENT_SECRET}"
subscription_key = "{DEMO_SUBSCRIPTION_KEY}"
merchant_serial_number = "{DEMO_MSN}"

[store]
path = "events.sqlite3"
"""
    )
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "webhooks", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def register(
    config: Path, url: str, secret_file: Path, *events: str
) -> subprocess.CompletedProcess[str]:
    """`vipps-proxy webhooks register` for set `main`, in a thread (the CLI blocks)."""
    return await asyncio.to_thread(
        cli,
        config,
        "register",
        "--credentials",
        "main",
        "--url",
        url,
        "--events",
        *(events or ("epayments.payment.created.v1",)),
        "--secret-file",
        str(secret_file),
    )


async def test_register_writes_the_secret_0600_and_never_prints_it(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    config = write_cli_config(tmp_path, emulator)
    secret_file = tmp_path / "webhook.secret"
    result = await register(
        config,
        "https://shop.example.com/webhooks/vipps",
        secret_file,
        "epayments.payment.created.v1",
        "epayments.payment.captured.v1",
    )
    assert result.returncode == 0, result.stderr
    from proxy.emulator.webhooks import webhook_hub

    (registration,) = webhook_hub(emulator.server.app).registrations.values()
    secret = registration.secret.reveal()
    assert secret_file.read_text().strip() == secret
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert secret not in result.stdout + result.stderr
    assert registration.id in result.stdout
    assert registration.events == ("epayments.payment.created.v1", "epayments.payment.captured.v1")


async def test_register_runs_with_the_config_whose_secret_file_it_writes(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The documented order: the config already names the hook's ``secret_file`` (here
    relative, from the config's folder), which does not exist yet; register writes it,
    and then the same config checks and carries the registered secret."""
    config = write_cli_config(tmp_path, emulator)
    hook = '[[webhooks]]\npath = "/webhooks/vipps"\nsecret_file = "webhook.secret"\n'
    config.write_text(
        config.read_text() + hook + 'deliver_to = "http://127.0.0.1:9000/vipps/events"\n'
    )
    secret_file = tmp_path / "webhook.secret"
    result = await register(config, "https://shop.example.com/webhooks/vipps", secret_file)
    assert result.returncode == 0, result.stderr
    from proxy.emulator.webhooks import webhook_hub

    (registration,) = webhook_hub(emulator.server.app).registrations.values()
    loaded = load_config(config)
    assert loaded.webhooks[0].secrets == (registration.secret,)
    checked = await asyncio.to_thread(run_cli, "check", "--config", str(config))
    assert checked.returncode == 0, checked.stderr


async def test_emulator_events_reach_the_app_through_the_proxy_signed_and_verified(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """Register (CLI), create and capture a payment through the proxy: the app gets the
    CREATED, AUTHORIZED and CAPTURED events in order, each verified by the proxy."""
    app = LegacyApp()
    app_server = await aiohttp_server(app.app(), host="127.0.0.1")
    port = free_port()
    secret_file = tmp_path / "webhook.secret"
    result = await register(
        write_cli_config(tmp_path, emulator),
        f"http://127.0.0.1:{port}{HOOK}",
        secret_file,
        "epayments.payment.created.v1",
        "epayments.payment.authorized.v1",
        "epayments.payment.captured.v1",
    )
    assert result.returncode == 0, result.stderr
    hook = {
        "path": HOOK,
        "secret_file": str(secret_file),
        "deliver_to": str(app_server.make_url("/vipps/events")),
    }
    config = make_config(
        emulator.token_url,
        emulator.url,
        server={"port": port},
        extra={"webhooks": [hook], "store": {"path": str(tmp_path / "events.sqlite3")}},
    )
    proxy = await start_proxy(config)
    amount = {"currency": "NOK", "value": 4900}
    async with aiohttp.ClientSession() as client:
        created = {
            "amount": amount,
            "paymentMethod": {"type": "WALLET"},
            "reference": "loop-order-1",
            "userFlow": "WEB_REDIRECT",
            "returnUrl": "https://example.com/return",
            "paymentDescription": "loop",
        }
        headers = {"Idempotency-Key": "loop-order-1"}
        async with client.post(
            proxy.at("/epayment/v1/payments"), json=created, headers=headers
        ) as response:
            assert response.status == 201
        async with client.post(
            proxy.at("/epayment/v1/test/payments/loop-order-1/approve")
        ) as response:
            assert response.status == 200  # the user says yes in the app
        async with client.post(
            proxy.at("/epayment/v1/payments/loop-order-1/capture"),
            json={"modificationAmount": amount},
            headers={"Idempotency-Key": "loop-order-1-capture"},
        ) as response:
            assert response.status == 200
    await eventually(lambda: len(app.received) == 3, "three events at the app")
    names = [orjson.loads(body)["name"] for body in app.bodies()]
    assert names == ["CREATED", "AUTHORIZED", "CAPTURED"]
    assert {line["result"] for line in proxy.logs.events("webhook_received")} == {"accepted"}


def test_list_and_retry_failed_events(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_text(
        """
[credentials.main]
token_url = "http://127.0.0.1:9/accesstoken/get"
client_id = "a"
client_secret = "client-secret-value"
subscription_key = "subkey-value"

[store]
path = "var/events.sqlite3"
"""
    )
    store = Store(tmp_path / "var" / "events.sqlite3")
    ids = [
        store.add(
            hook=HOOK,
            path=HOOK,
            method="POST",
            headers=[],
            body=b'{"reference":"r-%d"}' % n,
            ordering_key=f"r-{n}",
            now=1_800_000_000,
        )[0]
        for n in range(3)
    ]
    store.mark_failed(ids[0], 12, "status_500")
    store.mark_failed(ids[1], 12, "timeout")
    store.close()
    listed = cli(config, "list", "--state", "failed")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ids[:2]
    assert "reference=r-0" in lines[0]
    assert "last_error=status_500" in lines[0]
    assert cli(config, "retry", ids[0]).returncode == 0
    assert [e.id for e in stored(tmp_path / "var" / "events.sqlite3", "failed")] == [ids[1]]
    assert cli(config, "retry", "--failed").returncode == 0
    assert stored(tmp_path / "var" / "events.sqlite3", "failed") == []
    assert len(stored(tmp_path / "var" / "events.sqlite3", "pending")) == 3
    assert cli(config, "retry", "no-such-id").returncode == 1


async def test_the_demo_shows_the_webhook_loop() -> None:
    """`vipps-proxy demo`: a payment made with the printed curl line comes back to the
    demo app as webhooks through the proxy, and the app prints them."""
    async with running_demo() as (demo, _):
        line = await read_until(demo, b"curl ")
        await asyncio.to_thread(
            subprocess.run, ["bash", "-c", line.decode()], capture_output=True, timeout=20
        )
        await read_until(demo, b"demo app received AUTHORIZED for payment demo-")
    assert demo.returncode == 0


async def test_an_emulated_ecom_callback_reaches_the_app_through_the_proxy(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """eCom v2 initiated and approved through the proxy with a callbackPrefix at the
    proxy: the emulator's one callback, ``RESERVED`` as for every regular payment, is
    answered by the proxy and reaches the app with the merchant's authToken."""
    app = LegacyApp()
    app_server = await aiohttp_server(app.app(), host="127.0.0.1")
    hook = {"path": "/ecom", "kind": "ecom-callback", "deliver_to": str(app_server.make_url("/cb"))}
    config = make_config(
        emulator.token_url,
        emulator.url,
        extra={"webhooks": [hook], "store": {"path": str(tmp_path / "events.sqlite3")}},
    )
    proxy = await start_proxy(config)
    initiate = {
        "customerInfo": {},
        "merchantInfo": {
            "merchantSerialNumber": DEMO_MSN,
            "callbackPrefix": proxy.at("/ecom"),
            "fallBack": "https://example.com/fallback",
            "authToken": "order-auth-token-1",
        },
        "transaction": {"orderId": "ecom-order-1", "amount": 20000, "transactionText": "x"},
    }
    approve = proxy.at("/ecomm/v2/integration-test/payments/ecom-order-1/approve")
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.at("/ecomm/v2/payments"), json=initiate) as response:
            assert response.status == 200
        async with client.post(approve, json={}) as approved:
            assert approved.status == 200
    await eventually(lambda: len(app.received) == 1, "the callback at the app")
    got = app.received[0]
    assert got.path_qs == "/cb/v2/payments/ecom-order-1"
    assert got.header("Authorization") == "order-auth-token-1"
    assert orjson.loads(got.body)["transactionInfo"]["status"] == "RESERVED"
    from proxy.emulator.ecom import ECOM_KEY

    assert emulator.server.app[ECOM_KEY].callbacks == {"ecom-order-1": 200}


async def test_register_with_the_webhooks_api_unreachable_says_so_in_one_line(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A Webhooks API that cannot be reached is one line naming it and exit 1, not a
    traceback (a token was fetched first: that part works)."""
    config = write_cli_config(tmp_path, emulator)
    dead = free_port()  # nothing listens there
    with config.open("a") as out:
        out.write(f'\n[[routes]]\nprefix = "/webhooks/"\nupstream = "http://127.0.0.1:{dead}"\n')
    result = await register(
        config,
        "https://shop.example.com/webhooks/vipps",
        tmp_path / "webhook.secret",
        "epayments.payment.created.v1",
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"127.0.0.1:{dead}" in line
    assert not (tmp_path / "webhook.secret").exists()


async def test_register_never_writes_the_secret_through_a_symlink(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """--secret-file that is a symlink is refused before Vipps is asked (the secret is
    shown once): the link's target is left as it was, nothing is registered."""
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me\n")
    target.chmod(0o644)
    link = tmp_path / "webhook.secret"
    link.symlink_to(target)
    result = await register(
        write_cli_config(tmp_path, emulator),
        "https://shop.example.com/webhooks/vipps",
        link,
        "epayments.payment.created.v1",
    )
    from proxy.emulator.webhooks import webhook_hub

    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "--secret-file" in line
    assert target.read_text() == "keep me\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not webhook_hub(emulator.server.app).registrations
