"""Upstream faults: refused, slow, broken; always a problem answer or an aborted stream."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import aiohttp
import pytest

from tests.conftest import ProxyFactory, RunningEmulator, free_port, make_config


async def fetch(url: str) -> tuple[int, str, dict[str, object]]:
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        body = await response.json(content_type=None)
        return response.status, response.content_type, body


@pytest.fixture
def unanswering_port() -> Iterator[int]:
    """A loopback port whose accept queue is full, so new connections hang in SYN."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for sock in [*fillers, server]:
        sock.close()


async def test_refused_upstream_gives_502(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """Nothing listening upstream: 502 problem+json naming no secret."""
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = await start_proxy(make_config(emulator.token_url, dead))
    status, ctype, body = await fetch(proxy.at("/echo/x"))
    assert (status, ctype) == (502, "application/problem+json")
    assert set(body) == {"type", "title", "status", "detail", "request_id"}
    (line,) = proxy.logs.events("request_completed")
    assert line["error"] == "connect_failed"


async def test_slow_upstream_gives_504(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """An upstream that does not answer within read_timeout: 504 problem+json."""
    config = make_config(emulator.token_url, emulator.url, route={"read_timeout": 0.3})
    proxy = await start_proxy(config)
    status, ctype, _ = await fetch(proxy.at("/slow/3"))
    assert (status, ctype) == (504, "application/problem+json")
    (line,) = proxy.logs.events("request_completed")
    assert line["error"] == "read_timeout"


async def test_unanswered_connect_gives_504(
    emulator: RunningEmulator, start_proxy: ProxyFactory, unanswering_port: int
) -> None:
    """A connect that never completes times out at connect_timeout: 504."""
    config = make_config(
        emulator.token_url,
        f"http://127.0.0.1:{unanswering_port}",
        route={"connect_timeout": 0.3},
    )
    proxy = await start_proxy(config)
    status, _, _ = await asyncio.wait_for(fetch(proxy.at("/echo/x")), 10)
    assert status == 504
    (line,) = proxy.logs.events("request_completed")
    assert line["error"] == "connect_timeout"


async def test_reset_mid_body_aborts_the_client_connection(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """After headers went out, an upstream reset cuts the client's stream; it is logged."""
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    emulator.state.faults.api = "reset_mid_body"
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.at("/download/1000000")) as response,
    ):
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    async with asyncio.timeout(30):  # the line is written once the proxy's handler ends
        while not proxy.logs.events("request_completed"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    (line,) = proxy.logs.events("request_completed")
    assert line["error"] == "upstream_reset_mid_body"


async def test_upstream_5xx_passes_through_unchanged(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """A 5xx that Vipps itself sends is Vipps's answer: status and body pass as they are."""
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    emulator.state.faults.api = "error503"
    async with aiohttp.ClientSession() as client, client.get(proxy.at("/echo/x")) as response:
        assert response.status == 503
        assert "request_id" not in await response.text()


async def test_dropped_post_is_not_resent(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """An upstream that drops a POST on a pooled connection gets it once: 502, no resend."""
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.at("/echo/warm"), data=b"1") as response:
            assert response.status == 200  # a pooled upstream connection now exists
        emulator.state.faults.api = "reset"
        emulator.state.faults.fail_count = 1
        async with client.post(proxy.at("/echo/once"), data=b"2") as response:
            assert response.status == 502
    assert [r.raw_path for r in emulator.state.received].count("/echo/once") == 1


async def test_dropped_put_on_a_pooled_connection_is_resent_once(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """A PUT (idempotent, body held) whose pooled connection is reset unanswered goes
    again on a new connection, once: the client gets the second attempt's answer."""
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    async with aiohttp.ClientSession() as client:
        async with client.put(proxy.at("/echo/warm"), data=b"1") as response:
            assert response.status == 200  # a pooled upstream connection now exists
        emulator.state.faults.api = "reset"
        emulator.state.faults.fail_count = 1
        async with client.put(proxy.at("/echo/twice"), data=b"2") as response:
            assert response.status == 200
    assert [r.raw_path for r in emulator.state.received].count("/echo/twice") == 2


async def test_upstream_failures_are_counted_by_kind(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """A refused upstream shows in vipps_proxy_upstream_errors_total with its kind."""
    proxy = await start_proxy(make_config(emulator.token_url, f"http://127.0.0.1:{free_port()}"))
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.at("/x")) as response:
            assert response.status == 502
        async with client.get(proxy.at("/-/metrics")) as response:
            text = await response.text()
    assert 'vipps_proxy_upstream_errors_total{kind="connect_failed",route="/"} 1.0' in text
