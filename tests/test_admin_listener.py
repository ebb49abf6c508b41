"""``[server] admin_port``: health, readiness and metrics on a listener of their own;
without it, ``/-/metrics`` on the API port asks for a client key like any call."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import orjson
import pytest

from proxy.config import ConfigError, load_config
from proxy.redact import Redactor
from proxy.runner import ProxyRunner
from proxy.server import start
from proxy.startup import StartupError
from tests.conftest import ProxyFactory, RunningEmulator, RunningProxy, free_port, make_config
from tests.processes import write_config

ADMIN_PATHS = ("/-/health", "/-/ready", "/-/metrics")
CLIENT_KEY = "a-client-key-of-32-characters-00"


async def get(url: str, **headers: str) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(url, headers=headers) as response,
    ):
        return response.status, response.content_type, await response.read()


def admin_url(proxy: RunningProxy, path: str) -> str:
    assert isinstance(proxy.runner, ProxyRunner)
    assert proxy.runner.admin is not None
    host, port = proxy.runner.admin.addresses[0][:2]
    return f"http://{host}:{port}{path}"


@pytest.fixture
async def with_admin(emulator: RunningEmulator, start_proxy: ProxyFactory) -> RunningProxy:
    server = {"admin_port": free_port()}
    return await start_proxy(make_config(emulator.token_url, emulator.url, server=server))


@pytest.mark.parametrize("path", ADMIN_PATHS)
async def test_admin_port_serves_the_reserved_paths(with_admin: RunningProxy, path: str) -> None:
    """Health, readiness and metrics answer 200 on the admin listener, with the
    request's ``X-Request-Id`` like every answer of the proxy."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(admin_url(with_admin, path), headers={"X-Request-Id": "probe-1"}) as response,
    ):
        assert response.status == 200
        assert response.headers["X-Request-Id"] == "probe-1"


@pytest.mark.parametrize("path", ADMIN_PATHS)
async def test_with_admin_port_the_api_port_answers_404_for_reserved_paths(
    with_admin: RunningProxy, emulator: RunningEmulator, path: str
) -> None:
    """The API port answers a problem 404 for ``/-/`` and sends nothing upstream."""
    status, ctype, body = await get(with_admin.at(path))
    assert (status, ctype) == (404, "application/problem+json")
    assert orjson.loads(body)["status"] == 404
    assert not [r for r in emulator.state.received if r.raw_path.startswith("/-/")]


@pytest.mark.parametrize("on", ["admin listener", "API port"])
async def test_an_unknown_reserved_path_is_a_problem_404_naming_the_known_ones(
    emulator: RunningEmulator, start_proxy: ProxyFactory, on: str
) -> None:
    """``/-/nope`` is answered like any path without a route: ``application/problem+json``
    naming the reserved paths, with the client's ``X-Request-Id`` in it and on it."""
    server = {"admin_port": free_port()} if on == "admin listener" else {}
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url, server=server))
    url = admin_url(proxy, "/-/nope") if on == "admin listener" else proxy.at("/-/nope")
    async with (
        aiohttp.ClientSession() as client,
        client.get(url, headers={"X-Request-Id": "req-404"}) as response,
    ):
        assert (response.status, response.content_type) == (404, "application/problem+json")
        assert response.headers["X-Request-Id"] == "req-404"
        problem = orjson.loads(await response.read())
    assert (problem["status"], problem["request_id"]) == (404, "req-404")
    assert all(path in problem["detail"] for path in ADMIN_PATHS)
    assert not [r for r in emulator.state.received if r.raw_path.startswith("/-/")]


async def test_admin_listener_is_on_loopback_by_default(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """Without ``admin_host`` the admin listener binds 127.0.0.1, not ``host``."""
    server = {"host": "127.0.0.2", "admin_port": free_port()}
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url, server=server))
    assert isinstance(proxy.runner, ProxyRunner)
    assert proxy.runner.admin is not None
    assert proxy.runner.addresses[0][0] == "127.0.0.2"
    assert proxy.runner.admin.addresses[0][0] == "127.0.0.1"


async def test_admin_metrics_count_the_api_ports_calls(with_admin: RunningProxy) -> None:
    """The admin listener's metrics are the proxy's: a call on the API port counts."""
    assert (await get(with_admin.at("/echo/counted")))[0] == 200
    _, _, body = await get(admin_url(with_admin, "/-/metrics"))
    assert 'vipps_proxy_requests_total{method="GET",route="/",status="200"} 1.0' in body.decode()


async def test_admin_port_in_use_is_a_startup_error_leaving_nothing_open(
    emulator: RunningEmulator,
) -> None:
    """An admin port already taken: a `StartupError` naming ``server.admin_port``, and
    the API port that was already listening is closed again."""
    api_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin_port = taken.getsockname()[1]
        server = {"port": api_port, "admin_port": admin_port}
        config = make_config(emulator.token_url, emulator.url, server=server)
        with pytest.raises(StartupError, match=r"^server\.admin_port: .* already in use"):
            await start(config, Redactor(config.secrets))
    with socket.socket() as again:
        again.bind(("127.0.0.1", api_port))  # free: nothing was left listening


def test_admin_port_equal_to_port_is_a_config_error() -> None:
    """One port cannot be both listeners."""
    with pytest.raises(ConfigError, match=r"^server\.admin_port: must differ from port"):
        make_config(
            "https://apitest.vipps.no/accesstoken/get", server={"port": 9000, "admin_port": 9000}
        )


@pytest.fixture
async def with_keys(emulator: RunningEmulator, start_proxy: ProxyFactory) -> RunningProxy:
    server = {"client_keys": [CLIENT_KEY]}
    return await start_proxy(make_config(emulator.token_url, emulator.url, server=server))


async def test_metrics_on_the_api_port_need_a_client_key(with_keys: RunningProxy) -> None:
    """With ``client_keys`` and no admin port, ``/-/metrics`` without a key is 407, with
    one 200."""
    assert (await get(with_keys.at("/-/metrics")))[0] == 407
    key = {"Proxy-Authorization": f"Bearer {CLIENT_KEY}"}
    assert (await get(with_keys.at("/-/metrics"), **key))[0] == 200


@pytest.mark.parametrize("path", ["/-/health", "/-/ready"])
async def test_probes_stay_open_without_a_client_key(with_keys: RunningProxy, path: str) -> None:
    """Health and readiness answer probes that carry no client key."""
    assert (await get(with_keys.at(path)))[0] == 200


async def test_an_admin_port_added_by_a_reload_waits_for_a_restart(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A reload that sets ``admin_port`` names it in ``reload_needs_restart``, and the
    API port goes on answering ``/-/health`` as the process started (no admin listener
    runs, so the API port must not turn its probes away)."""
    path = tmp_path / "proxy.toml"
    write_config(path, str(emulator.token_url), str(emulator.url), 0)
    proxy = await start_proxy(load_config(path))
    assert isinstance(proxy.runner, ProxyRunner)
    write_config(path, str(emulator.token_url), str(emulator.url), 0, admin_port=free_port())
    assert await proxy.runner.reloader.reload("signal")
    assert [line["keys"] for line in proxy.logs.events("reload_needs_restart")] == [
        ["server.admin_port"]
    ]
    assert (await get(proxy.at("/-/health")))[0] == 200
