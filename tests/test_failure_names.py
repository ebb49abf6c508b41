"""Every failure under its true name (issue 22, point 4).

A client that leaves a download, or stops reading one, is the client's failure: its
call is logged ``client_disconnected`` or ``client_read_timeout`` and never counted in
``vipps_proxy_upstream_errors_total``, whatever exception aiohttp raised for it (its
``ClientConnectionResetError`` is both a client error and a ``ConnectionResetError``).
An upstream that resets mid-body is the upstream's: each such call is counted.
Real sockets both ways: the emulator upstream, raw clients.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from tests.conftest import ProxyFactory, RunningEmulator, RunningProxy, make_config
from tests.test_fault_matrix import KIB, calls, metric, wait_until

pytestmark = pytest.mark.timeout(120)

LEAVING = 120  # clients leaving a healthy download at once
RESET = 40  # calls whose answer the upstream cuts short
WAIT = 30.0  # the ceiling on any one wait: a busy machine is slow, never this slow
UPSTREAM_ERRORS = "vipps_proxy_upstream_errors_total"


async def proxy_without_tokens(
    emulator: RunningEmulator, start_proxy: ProxyFactory, **server: Any
) -> RunningProxy:
    config = make_config(emulator.token_url, emulator.url, route={"auth": "none"}, server=server)
    return await start_proxy(config)


async def leave_mid_download(proxy: RunningProxy, reset: bool) -> None:
    """Start a 1 GiB download, take its head and 64 KiB, then leave: a reset, or a
    close (a FIN, which the proxy learns of only when a write fails)."""
    reader, writer = await asyncio.open_connection(*proxy.address)
    try:
        writer.write(f"GET /download/{KIB**3} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(WAIT):
            head = await reader.readuntil(b"\r\n\r\n")
            taken = 0
            while taken < 64 * KIB:  # read as fast as it comes: the proxy never waits
                taken += len(await reader.read(1 << 16))
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        if reset:
            writer.transport.abort()
        else:
            writer.close()


async def logged(proxy: RunningProxy, count: int, what: str) -> list[dict[str, Any]]:
    """The ``request_completed`` lines, once ``count`` calls are logged."""

    async def done() -> bool:
        return len(calls(proxy)) >= count

    await wait_until(done, what, seconds=WAIT)
    return calls(proxy)


async def test_clients_leaving_mid_download_are_never_counted_as_upstream_errors(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """120 clients leave mid-download at once, half resetting their connections, half
    closing them: each call is logged client_disconnected, and not one counts as an
    upstream error."""
    proxy = await proxy_without_tokens(emulator, start_proxy)
    await asyncio.gather(*(leave_mid_download(proxy, i % 2 == 0) for i in range(LEAVING)))
    lines = await logged(proxy, LEAVING, "every cut download to be logged")
    assert [line["error"] for line in lines] == ["client_disconnected"] * LEAVING
    assert await metric(proxy, UPSTREAM_ERRORS) == 0


async def test_a_client_that_stops_reading_is_a_client_read_timeout_not_an_upstream_error(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """A client that takes none of a download for body_timeout is cut and logged
    client_read_timeout; the upstream, which did nothing wrong, is not blamed."""
    proxy = await proxy_without_tokens(emulator, start_proxy, body_timeout=1)
    reader, writer = await asyncio.open_connection(*proxy.address)
    try:
        writer.write(f"GET /download/{KIB**3} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(WAIT):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        cast(asyncio.Transport, writer.transport).pause_reading()  # and reads no more
        (line,) = await logged(proxy, 1, "the stalled download to be cut")
    finally:
        writer.transport.abort()
    assert (line["status"], line["error"]) == (200, "client_read_timeout")
    assert await metric(proxy, UPSTREAM_ERRORS) == 0


async def test_an_upstream_resetting_mid_body_is_counted_for_each_call(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """The upstream cuts every answer short: each call is logged and counted as the
    upstream's fault, upstream_reset_mid_body, while the clients wait for the rest."""
    proxy = await proxy_without_tokens(emulator, start_proxy)
    emulator.state.faults.api = "reset_mid_body"

    async def cut_download() -> None:
        reader, writer = await asyncio.open_connection(*proxy.address)
        try:
            writer.write(b"GET /download/1000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            async with asyncio.timeout(WAIT):
                while await reader.read(1 << 16):  # to the proxy's cut
                    pass
        finally:
            writer.close()

    await asyncio.gather(*(cut_download() for _ in range(RESET)))
    lines = await logged(proxy, RESET, "every cut answer to be logged")
    assert [line["error"] for line in lines] == ["upstream_reset_mid_body"] * RESET
    kind = {"kind": "upstream_reset_mid_body"}
    assert await metric(proxy, UPSTREAM_ERRORS, **kind) == RESET
    assert await metric(proxy, UPSTREAM_ERRORS) == RESET
