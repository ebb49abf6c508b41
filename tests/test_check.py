"""`vipps-proxy check`: offline, what cannot work is exit 2 naming the key; with
``--online``, a token per credential set and a connection to each upstream and
deliver_to, one line per check, no secret, exit 1 if any fails."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from proxy.emulator import DEMO_SALES_UNITS
from tests.conftest import RunningEmulator, free_port
from tests.test_tls import StartTLSEmulator, ca_file, start_tls_emulator

from .test_config import run_cli

__all__ = ["start_tls_emulator"]  # a fixture, used by name

OSLO, BERGEN = DEMO_SALES_UNITS
SECRETS = [OSLO.client_id, OSLO.client_secret, OSLO.subscription_key]


@dataclass(frozen=True)
class Checked:
    returncode: int
    stdout: str
    stderr: str

    def lines(self, status: str) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.startswith(status)]


def config_text(token_url: str, upstream: str, secret: str = OSLO.client_secret) -> str:
    return f"""
[credentials.main]
token_url = "{token_url}"
client_id = "{OSLO.client_id}"
client_secret = "{secret}"
subscription_key = "{OSLO.subscription_key}"
merchant_serial_number = "{OSLO.merchant_serial_number}"

[[routes]]
prefix = "/"
upstream = "{upstream}"
"""


async def check_online(config: Path) -> Checked:
    """`vipps-proxy check --online` in its own process (the upstreams serve in ours)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "check",
        "--online",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Checked(process.returncode, out.decode(), err.decode())


def assert_no_secret(result: Checked, *extra: str) -> None:
    for secret in [*SECRETS, *extra]:
        assert secret not in result.stdout + result.stderr


async def test_check_online_passes_against_the_emulator(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A token fetched and the upstream connected: two ok lines, exit 0, no secret."""
    config = tmp_path / "proxy.toml"
    config.write_text(config_text(str(emulator.token_url), str(emulator.url)))
    result = await check_online(config)
    assert result.returncode == 0, result
    token, connect = result.lines("ok")
    assert "credentials.main" in token
    assert "routes[0].upstream" in connect
    assert not result.lines("FAIL")
    assert sum(emulator.state.token_requests.values()) == 1
    assert emulator.state.received_total == 0  # no API call
    assert_no_secret(result)


async def test_check_online_fails_on_a_dead_upstream_port(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """An upstream nobody listens on: a FAIL line naming the key, exit 1."""
    config = tmp_path / "proxy.toml"
    config.write_text(config_text(str(emulator.token_url), f"http://127.0.0.1:{free_port()}"))
    result = await check_online(config)
    assert result.returncode == 1
    (failed,) = result.lines("FAIL")
    assert "routes[0].upstream" in failed
    assert len(result.lines("ok")) == 1  # the token still came
    assert_no_secret(result)


async def test_check_online_fails_on_a_dead_deliver_to(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A webhook's deliver_to nobody listens on is checked like an upstream."""
    config = tmp_path / "proxy.toml"
    hook_secret = "a-webhook-secret-for-the-test"
    config.write_text(
        config_text(str(emulator.token_url), str(emulator.url))
        + f"""
[[webhooks]]
path = "/hooks/vipps"
secret = "{hook_secret}"
deliver_to = "http://127.0.0.1:{free_port()}/events"
"""
    )
    result = await check_online(config)
    assert result.returncode == 1
    (failed,) = result.lines("FAIL")
    assert "webhooks[0].deliver_to" in failed
    assert_no_secret(result, hook_secret)


async def test_check_online_fails_on_a_refused_token_without_showing_the_secret(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Wrong credentials: the token line fails with Vipps' answer, and no secret shows."""
    wrong = "a-wrong-client-secret-value"
    config = tmp_path / "proxy.toml"
    config.write_text(config_text(str(emulator.token_url), str(emulator.url), secret=wrong))
    result = await check_online(config)
    assert result.returncode == 1
    (failed,) = result.lines("FAIL")
    assert "credentials.main" in failed
    assert "401" in failed
    assert_no_secret(result, wrong)


@pytest.fixture
async def dead_token_port() -> AsyncIterator[int]:
    """A port that accepts connections and closes them at once."""

    async def close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_check_online_fails_on_a_token_endpoint_that_hangs_up(
    dead_token_port: int, emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A token endpoint that closes every connection: the token check fails, exit 1."""
    config = tmp_path / "proxy.toml"
    token_url = f"http://127.0.0.1:{dead_token_port}/accesstoken/get"
    config.write_text(config_text(token_url, str(emulator.url)))
    result = await check_online(config)
    assert result.returncode == 1
    (failed,) = result.lines("FAIL")
    assert "credentials.main" in failed


@pytest.mark.parametrize("trusted", [True, False], ids=["ca_bundle", "untrusted"])
async def test_check_online_verifies_tls_as_the_proxy_does(
    start_tls_emulator: StartTLSEmulator, tmp_path: Path, trusted: bool
) -> None:
    """An HTTPS upstream from a private CA: trusted through tls.ca_bundle it passes (token
    and connect); without it both fail on the certificate."""
    ca = trustme.CA()
    upstream = await start_tls_emulator(ca.issue_cert("127.0.0.1"))
    config = tmp_path / "proxy.toml"
    text = config_text(str(upstream.token_url), str(upstream.url))
    if trusted:
        text = f'[tls]\nca_bundle = "{ca_file(ca, tmp_path, "private")}"\n' + text
    config.write_text(text)
    result = await check_online(config)
    if trusted:
        assert result.returncode == 0, result
        assert "TLS verified" in result.lines("ok")[1]
    else:
        assert result.returncode == 1
        token, connect = result.lines("FAIL")
        assert "credentials.main" in token
        assert "certificate" in connect
    assert_no_secret(result)


# --------------------------------------------------------------------------- offline


def test_a_token_url_without_a_path_is_a_config_error(tmp_path: Path) -> None:
    """`token_url = "https://apitest.vipps.no"` would post credentials to the root: exit 2
    naming the key."""
    config = tmp_path / "proxy.toml"
    config.write_text(config_text("https://apitest.vipps.no", "https://apitest.vipps.no"))
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith("vipps-proxy: credentials.main.token_url: ")


def test_an_unwritable_store_folder_is_a_config_error_in_check(tmp_path: Path) -> None:
    """A store under a path that cannot be a folder (here: below a file; on a read-only
    system, the same) fails `check` with exit 2 naming store.path, as `run` would fail."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config = tmp_path / "proxy.toml"
    config.write_text(
        config_text("https://apitest.vipps.no/accesstoken/get", "https://apitest.vipps.no")
        + f"""
[[webhooks]]
path = "/hooks/vipps"
secret = "a-webhook-secret-for-the-test"
deliver_to = "http://127.0.0.1:9000/events"

[store]
path = "{blocker}/store/webhooks.sqlite3"
"""
    )
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"vipps-proxy: store.path: {blocker} is not a folder"]


@pytest.mark.parametrize("default", ["", "bergen"])
def test_check_says_what_a_call_without_merchant_serial_number_gets(
    tmp_path: Path, default: str
) -> None:
    """A route with several sets: `check` names its default set, or says 400 missing_msn."""
    config = tmp_path / "proxy.toml"
    units = "".join(
        f"""
[credentials.{name}]
token_url = "https://apitest.vipps.no/accesstoken/get"
client_id = "{unit.client_id}"
client_secret = "{unit.client_secret}"
subscription_key = "{unit.subscription_key}"
merchant_serial_number = "{unit.merchant_serial_number}"
"""
        for name, unit in (("oslo", OSLO), ("bergen", BERGEN))
    )
    chosen = f'default_credentials = "{default}"\n' if default else ""
    config.write_text(
        units
        + '[[routes]]\nprefix = "/"\nupstream = "https://apitest.vipps.no"\n'
        + 'credentials = ["oslo", "bergen"]\n'
        + chosen
    )
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    expected = "credential set 'bergen' (default_credentials)" if default else "400 missing_msn"
    assert f"routes[0] /: without Merchant-Serial-Number: {expected}" in result.stderr
