"""Clients that hold the proxy's resources: slow or silent bodies, too many connections.

A body may pause at most ``body_timeout`` seconds between two bytes; the call then ends
with a 408 problem (reason ``client_body_timeout``) and, for a streamed body, its
upstream connection is closed. Beyond ``max_connections`` client connections, a new
one is closed as it is accepted. Every test talks raw bytes over loopback sockets to a
real proxy in front of the emulator; timeouts are small so that the tests end.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from aiohttp import web

from tests.conftest import (
    ProxyFactory,
    RunningEmulator,
    RunningProxy,
    make_config,
)
from tests.test_security import PROBLEM_JSON, Answer, exchange, get, read_answer
from tests.test_upstream_pool import Conn, RawUpstream

BODY_TIMEOUT = 0.5
#: A bound for waits in these tests, not a measurement: many times ``BODY_TIMEOUT``.
WITHIN = 10.0
STREAMED = 100_000  # above the 64 KiB the proxy holds: the body is streamed upstream


@dataclass
class Limited:
    proxy: RunningProxy
    upstream: RunningEmulator

    def last_call(self) -> dict[str, object]:
        return self.proxy.logs.events("request_completed")[-1]


@pytest.fixture
async def limited(emulator: RunningEmulator, start_proxy: ProxyFactory) -> Limited:
    """The proxy with a short body_timeout, in front of the emulator (route ``/``)."""
    config = make_config(emulator.token_url, emulator.url, server={"body_timeout": BODY_TIMEOUT})
    proxy = await start_proxy(config)
    warm = await exchange(proxy.address, get("/echo/warm-up"))  # the token, fetched once
    assert warm.status == 200, warm.raw[:300]
    return Limited(proxy, emulator)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition``, checking every 50 ms, for at most WITHIN seconds."""
    for _ in range(round(WITHIN / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not so within {WITHIN} s")


@contextlib.asynccontextmanager
async def connection(
    address: tuple[str, int],
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def send_then_stall(address: tuple[str, int], *parts: bytes) -> Answer:
    """Write ``parts``, then nothing more, and read what comes back."""
    async with connection(address) as (reader, writer):
        for part in parts:
            writer.write(part)
            await writer.drain()
        return await read_answer(reader)


def post(path: str, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"POST {path} HTTP/1.1\r\nHost: proxy.test\r\n{extra}\r\n".encode()


STALLS = {
    "held-body-shorter-than-its-length": [post("/echo/s", "Content-Length: 100"), b"x" * 10],
    "held-body-never-sent": [post("/echo/s", "Content-Length: 100")],
    "chunked-body-never-sent": [post("/echo/s", "Transfer-Encoding: chunked")],
    "chunked-body-after-one-chunk": [
        post("/echo/s", "Transfer-Encoding: chunked"),
        b"a\r\n0123456789\r\n",
    ],
    "streamed-body-shorter-than-its-length": [
        post("/echo/s", f"Content-Length: {STREAMED}"),
        b"x" * 10,
    ],
}


@pytest.mark.parametrize("parts", STALLS.values(), ids=STALLS.keys())
async def test_a_stalled_body_gets_408_with_its_reason(
    limited: Limited, parts: list[bytes]
) -> None:
    """A body that stops for body_timeout: a 408 problem, the connection closed, and
    the call's log line says client_body_timeout."""
    answer = await send_then_stall(limited.proxy.address, *parts)
    assert answer.status == 408, answer.raw[:300]
    assert answer.headers["Content-Type"] == PROBLEM_JSON
    assert answer.headers["Connection"].lower() == "close"
    line = limited.last_call()
    assert (line["status"], line["error"]) == (408, "client_body_timeout")


async def test_a_held_body_that_stalls_never_reaches_the_upstream(limited: Limited) -> None:
    """A small body is read whole before the call: a stalled one is never sent."""
    before = limited.upstream.state.received_total
    answer = await send_then_stall(limited.proxy.address, *STALLS["held-body-never-sent"])
    assert answer.status == 408, answer.raw[:300]
    assert limited.upstream.state.received_total == before


async def test_a_streamed_body_that_stalls_closes_its_upstream_connection(
    limited: Limited,
) -> None:
    """The upstream got the head and ten bytes; the proxy's 408 ends the upstream call
    too: the upstream sees its connection close (its handler finishes with 10 bytes)."""
    parts = STALLS["streamed-body-shorter-than-its-length"]
    answer = await send_then_stall(limited.proxy.address, *parts)
    assert answer.status == 408, answer.raw[:300]
    received = limited.upstream.state.received[-1]
    assert received.raw_path == "/echo/s"
    await until(lambda: received.body_length == 10)  # set once the upstream's handler ends


async def answer_at_once_then_hang(conn: Conn) -> None:
    """The answer's head and a first chunk before the request body; then nothing."""
    await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nearly\r\n")
    await conn.wait_for_eof()


async def test_an_upload_stalling_after_the_answer_started_is_cut_with_its_reason(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """Too late for a 408: the client's connection is cut, the upstream's closed, and
    the log line still says client_body_timeout."""
    upstream = RawUpstream(answer_at_once_then_hang)
    await upstream.start()
    try:
        config = make_config(
            emulator.token_url,
            f"http://127.0.0.1:{upstream.port}",
            route={"auth": "none"},
            server={"body_timeout": BODY_TIMEOUT},
        )
        proxy = await start_proxy(config)
        async with connection(proxy.address) as (reader, writer):
            writer.write(post("/upload", f"Content-Length: {STREAMED}") + b"x" * 10)
            async with asyncio.timeout(WITHIN):
                received = await reader.read()  # to the end: the proxy closes
        assert received.startswith(b"HTTP/1.1 200 OK\r\n"), received[:300]
        assert b"early" in received
        assert not received.endswith(b"0\r\n\r\n")  # cut, not a whole answer
        await until(upstream.connections[0].eof.is_set)
        assert proxy.logs.events("request_completed")[-1]["error"] == "client_body_timeout"
    finally:
        await upstream.stop()


async def endless_answer(conn: Conn) -> None:
    """A 200 whose body never ends, sent as fast as the proxy takes it."""
    await conn.read_body()
    await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
    while True:
        await conn.send(b"x" * 65536)


async def test_a_client_that_stops_reading_the_answer_is_cut_and_frees_its_upstream(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """A client that takes no answer bytes for body_timeout seconds is cut (reason
    client_read_timeout) and the upstream connection closed: else it held one of the
    origin's connections for good, and enough such clients made the origin busy."""
    upstream = RawUpstream(endless_answer)
    await upstream.start()
    try:
        config = make_config(
            emulator.token_url,
            f"http://127.0.0.1:{upstream.port}",
            route={"auth": "none"},
            server={"body_timeout": BODY_TIMEOUT},
        )
        proxy = await start_proxy(config)
        async with connection(proxy.address) as (reader, writer):
            writer.write(b"GET /download HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
            cast(asyncio.Transport, writer.transport).pause_reading()  # and read nothing more
            await until(lambda: bool(proxy.logs.events("request_completed")))
            await until(upstream.connections[0].eof.is_set)
        (line,) = proxy.logs.events("request_completed")
        assert (line["status"], line["error"]) == (200, "client_read_timeout")
    finally:
        await upstream.stop()


async def test_a_client_that_pipelines_and_never_reads_is_cut(limited: Limited) -> None:
    """Small answers, pipelined, never read: once more than aiohttp's buffer waits for
    the client, it has body_timeout to take some; else it is cut. It held its
    connection for good (a slot of max_connections; on a listener open to the
    internet, for webhooks, anyone could fill them all with cheap 401s or 403s)."""
    asked, count = b"GET /-/metrics HTTP/1.1\r\nHost: proxy.test\r\n\r\n", 2000  # ~10 MB
    server = limited.proxy.runner.server
    assert server is not None
    served_before = server.requests_count  # cut: served some of ours, then dropped them
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(limited.proxy.address)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        transport = cast(asyncio.Transport, writer.transport)
        transport.pause_reading()
        writer.write(asked * count)
        await until(lambda: server.requests_count > served_before and not server.connections)
        transport.resume_reading()
        received, closed = bytearray(), False
        try:
            async with asyncio.timeout(WITHIN):
                while chunk := await reader.read(1 << 16):
                    received += chunk
            closed = True
        except ConnectionError:
            closed = True
        except TimeoutError:
            pass  # still open: not cut
    finally:
        writer.transport.abort()
    assert closed
    assert received.count(b"HTTP/1.1 200 OK") < count


async def test_a_slow_but_steady_body_is_not_cut(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """body_timeout bounds the gap between bytes, not the whole upload: a byte every
    tenth of it, for one and a half times it, is forwarded whole."""
    timeout, gap, count = 1.0, 0.1, 15
    config = make_config(emulator.token_url, emulator.url, server={"body_timeout": timeout})
    proxy = await start_proxy(config)
    async with connection(proxy.address) as (reader, writer):
        writer.write(post("/echo/steady", f"Content-Length: {count}"))
        for _ in range(count):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(gap)
        answer = await read_answer(reader)
    assert answer.status == 200, answer.raw[:300]
    assert answer.json()["body_length"] == count


# --------------------------------------------------------------------------- many uploads

SLOW_UPLOADS = 260  # more than the proxy's 256 upstream connections


async def test_slow_uploads_do_not_keep_another_route_from_answering(
    emulator: RunningEmulator, start_proxy: ProxyFactory, aiohttp_server: Any
) -> None:
    """260 uploads that send ten bytes of 100 000 and stop hold the upstream calls they
    opened; a GET to another route still gets 200, and every upload ends with 408."""

    async def serve(_: web.Request) -> web.Response:
        return web.Response(text="served")

    plain = web.Application()
    plain.router.add_get("/fast/served", serve)
    other = await aiohttp_server(plain, host="127.0.0.1")
    config = make_config(
        emulator.token_url,
        server={
            "body_timeout": 2.0,
            "header_timeout": WITHIN,
            "max_connections_per_client": SLOW_UPLOADS + 1,  # every client is 127.0.0.1
        },
        extra={
            "routes": [
                {"prefix": "/echo", "upstream": str(emulator.url)},
                {"prefix": "/fast", "upstream": str(other.make_url("/")), "auth": "none"},
            ]
        },
    )
    proxy = await start_proxy(config)
    head = post("/echo/upload", f"Content-Length: {STREAMED}") + b"x" * 10
    async with contextlib.AsyncExitStack() as stack:
        uploads = [
            await stack.enter_async_context(connection(proxy.address)) for _ in range(SLOW_UPLOADS)
        ]
        for _, writer in uploads:
            writer.write(head)
        await asyncio.gather(*(writer.drain() for _, writer in uploads))
        await until(lambda: emulator.state.received_total >= 200)  # most are upstream now
        served = await exchange(proxy.address, get("/fast/served"))
        assert served.status == 200, served.raw[:300]
        answers = await asyncio.gather(*(read_answer(reader) for reader, _ in uploads))
    assert [a.status for a in answers] == [408] * SLOW_UPLOADS
    timed_out = [
        line
        for line in proxy.logs.events("request_completed")
        if line.get("error") == "client_body_timeout"
    ]
    assert len(timed_out) == SLOW_UPLOADS


# --------------------------------------------------------------------------- connections

MAX_CONNECTIONS = 8


@pytest.fixture
async def bounded(emulator: RunningEmulator, start_proxy: ProxyFactory) -> Limited:
    config = make_config(
        emulator.token_url,
        emulator.url,
        server={"max_connections": MAX_CONNECTIONS, "header_timeout": WITHIN},
    )
    return Limited(await start_proxy(config), emulator)


async def hold(stack: contextlib.AsyncExitStack, proxy: RunningProxy, count: int) -> None:
    """Open ``count`` connections and make one keep-alive call on each, so that the
    proxy has surely accepted them; they stay open, idle, until ``stack`` closes."""
    for i in range(count):
        reader, writer = await stack.enter_async_context(connection(proxy.address))
        writer.write(f"GET /echo/held/{i} HTTP/1.1\r\nHost: proxy.test\r\n\r\n".encode())
        answer = await read_answer(reader)
        assert answer.status == 200, answer.raw[:300]


async def test_a_connection_beyond_max_connections_is_closed_unread(bounded: Limited) -> None:
    """With max_connections connections held, the next one is closed at once: its
    request gets no answer and never reaches the upstream."""
    async with contextlib.AsyncExitStack() as stack:
        await hold(stack, bounded.proxy, MAX_CONNECTIONS)
        before = bounded.upstream.state.received_total
        refused = await exchange(bounded.proxy.address, get("/echo/refused"))
        assert refused.status is None, refused.raw[:300]
        assert refused.raw == b""
    assert bounded.upstream.state.received_total == before


async def test_a_connection_below_max_connections_is_served(bounded: Limited) -> None:
    """Control: with one connection fewer held, the next call is answered."""
    async with contextlib.AsyncExitStack() as stack:
        await hold(stack, bounded.proxy, MAX_CONNECTIONS - 1)
        answer = await exchange(bounded.proxy.address, get("/echo/one-more"))
    assert answer.status == 200, answer.raw[:300]


async def test_a_connection_is_served_again_once_others_close(bounded: Limited) -> None:
    """The limit counts connections held now: after the held ones close, calls pass."""
    async with contextlib.AsyncExitStack() as stack:
        await hold(stack, bounded.proxy, MAX_CONNECTIONS)
    statuses = []

    async def served() -> bool:  # the proxy may not have seen every close yet
        statuses.append((await exchange(bounded.proxy.address, get("/echo/again"))).status)
        return statuses[-1] is not None

    for _ in range(round(WITHIN / 0.05)):
        if await served():
            break
        await asyncio.sleep(0.05)
    assert statuses[-1] == 200, statuses
