"""No credential in a URL (issue 22, point 5).

A user or password in ``upstream``, ``token_url``, ``deliver_to`` (or ``public_url``)
is a config error naming the key, the password nowhere in it: such a URL would be
shown in ``check`` and every log line, and is never used. The query values of
``deliver_to`` and ``public_url`` (an app key the legacy app checks) are masked like
secrets in ``check`` and in the logs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import ConfigError
from tests.conftest import ProxyFactory, RunningEmulator, free_port, make_config
from tests.test_config import ENV, GOOD, run_cli, write
from tests.test_webhooks_relay import start_app, start_relay
from tests.webhook_peers import ECOM, webhooks_table

PASSWORD = "url-pa55word-4711"
APP_KEY = "app-key-0123456789"
SIGNATURE = "sig-abcdef987654"
USERINFO = [f"user:{PASSWORD}@", "user@", f":{PASSWORD}@"]


def config_with(url_key: str, url: str) -> dict[str, Any]:
    """make_config's arguments with ``url`` under ``url_key``, everything else valid."""
    upstream = url if url_key == "upstream" else "https://api.vipps.test"
    token_url = url if url_key == "token_url" else "https://api.vipps.test/accesstoken/get"
    hook = webhooks_table("http://127.0.0.1:9000/vipps/events")
    if url_key in ("deliver_to", "public_url"):
        hook[url_key] = url
    return {"token_url": token_url, "upstream": upstream, "extra": {"webhooks": [hook]}}


@pytest.mark.parametrize("userinfo", USERINFO, ids=["user-and-password", "user", "password"])
@pytest.mark.parametrize(
    ("url_key", "named"),
    [
        ("upstream", "routes[0].upstream"),
        ("token_url", "credentials.main.token_url"),
        ("deliver_to", "webhooks[0].deliver_to"),
        ("public_url", "webhooks[0].public_url"),
    ],
)
def test_a_url_with_a_user_or_password_is_a_config_error_naming_the_key(
    url_key: str, named: str, userinfo: str
) -> None:
    """user:password@, user@ and :password@ are refused in every configured URL; the
    one-line error names the key and shows no password."""
    args = config_with(url_key, f"http://{userinfo}127.0.0.1:9000/x")
    with pytest.raises(ConfigError) as info:
        make_config(args.pop("token_url"), args.pop("upstream"), **args)
    assert info.value.key == named
    assert PASSWORD not in str(info.value)
    assert "\n" not in str(info.value)


def test_check_refuses_an_upstream_with_a_password_in_one_line_exit_2(tmp_path: Path) -> None:
    """The command line's way: exit 2, one line naming the key, the password nowhere."""
    route = f'\n[[routes]]\nprefix = "/"\nupstream = "https://u:{PASSWORD}@api.vipps.test"\n'
    result = run_cli("check", "--config", str(write(tmp_path, GOOD + route)), env={**ENV})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "routes[0].upstream" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_check_masks_the_query_values_of_deliver_to_and_public_url(tmp_path: Path) -> None:
    """``vipps-proxy check`` shows each query value as ***, its name kept."""
    hooks = f"""
[[webhooks]]
path = "/vipps/hook"
secret = "webhook-secret-value"
deliver_to = "http://127.0.0.1:9000/vipps/events?app_key={APP_KEY}&env=test"
public_url = "https://shop.example/vipps/hook?sig={SIGNATURE}"

[store]
path = "{tmp_path / "events.sqlite3"}"
"""
    env = {**os.environ, **ENV}
    result = run_cli("check", "--config", str(write(tmp_path, GOOD + hooks)), env=env)
    assert result.returncode == 0, result.stderr
    assert "app_key=***&env=***" in result.stdout
    assert "sig=***" in result.stdout
    for value in (APP_KEY, SIGNATURE):
        assert value not in result.stdout + result.stderr


async def test_a_deliver_to_query_value_is_never_logged(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """An eCom callback proxied at once to deliver_to: its log line names the URL with
    the app key masked, and the key appears nowhere in the log."""
    port = free_port()
    deliver_to = f"http://127.0.0.1:{port}/cb?app_key={APP_KEY}"
    hooks = [{"path": ECOM, "kind": "ecom-callback", "deliver_to": deliver_to}]
    relay = await start_relay(emulator, start_proxy, tmp_path, port, hooks=hooks)
    await start_app(aiohttp_server, relay.app, port)
    path = ECOM + "/v2/payments/o-5/shippingDetails"
    async with (
        aiohttp.ClientSession() as client,
        client.post(relay.proxy.at(path), json={"addressId": 1}) as response,
    ):
        assert response.status == 200
    (line,) = relay.proxy.logs.events("request_completed")
    assert line["upstream"] == f"http://127.0.0.1:{port}/cb?app_key=***"
    assert APP_KEY not in relay.proxy.logs.text()
