"""The upstream pool: connection reuse, the request on the wire, limits and failures.

Every upstream here is a raw ``asyncio.start_server`` on 127.0.0.1 that records the
exact bytes it receives, one ``Conn`` per TCP connection it accepts, so "same
connection" and "new connection" are counted by the upstream, not asked of the pool.
The pool is driven directly; one test goes through the running proxy to show what a
pool bug costs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from proxy.app import POOL_SIZE
from proxy.resolver import Resolver
from proxy.upstream import NoFreeConnection, UpstreamPool, UpstreamResponse
from proxy.upstream_connection import ConnectFailed, MalformedAnswer, Upstream
from tests.conftest import ProxyFactory, RunningEmulator, free_port, make_config

pytestmark = pytest.mark.timeout(120)  # a ceiling for a busy machine; idle, each takes < 2 s

BASE = "/base"
WAIT = 30.0  # the bound on any one wait in these tests; every wait ends long before
#: connect_timeout where a wait for a free connection must run out: a loopback connect,
#: which the same setting bounds, ends long before it even on a busy machine.
SLOT_WAIT = 2.0


@dataclass
class Received:
    """One request as it arrived: its head, and its body as sent and as meant."""

    head: bytes
    raw_body: bytes = b""
    body: bytes = b""


@dataclass(eq=False)
class Conn:
    """One TCP connection the raw upstream accepted."""

    index: int
    peer_port: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[Received] = field(default_factory=list)
    #: Set when the client closed the connection (the upstream read EOF).
    eof: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_body(self) -> bytes:
        """Read the current request's body by its framing; record it raw and decoded."""
        request = self.requests[-1]
        head = request.head.decode("latin-1").lower()
        if "\r\ntransfer-encoding: chunked\r\n" in head:
            raw, body = await read_chunked(self.reader)
        elif "\r\ncontent-length: " in head:
            length = int(head.split("\r\ncontent-length: ")[1].split("\r\n")[0])
            raw = body = await self.reader.readexactly(length)
        else:
            raw = body = b""
        request.raw_body, request.body = raw, body
        return body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def wait_for_eof(self) -> None:
        """Block until the client closes; used by answers that leave a call hanging."""
        while await self.reader.read(1 << 16):
            pass


async def read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """A chunked body, strictly: hex size, CRLF, data, CRLF, ..., ``0`` CRLF CRLF."""
    raw, body = bytearray(), bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        raw += size_line
        size = int(size_line[:-2], 16)
        data = await reader.readexactly(size + 2)
        raw += data
        assert data.endswith(b"\r\n"), f"chunk not closed by CRLF: {data!r}"
        if size == 0:
            return bytes(raw), bytes(body)
        body += data[:-2]


Answer = Callable[[Conn], Awaitable[None]]


async def answer_ok(conn: Conn) -> None:
    """200 with a body naming the connection and the call on it, e.g. ``conn 0 call 1``
    (to a HEAD, only the head)."""
    await conn.read_body()
    body = f"conn {conn.index} call {len(conn.requests)}".encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    await conn.send(head if conn.requests[-1].head.startswith(b"HEAD ") else head + body)


class RawUpstream:
    """A loopback HTTP/1.1 upstream that answers each request with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections: list[Conn] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def upstream(self, *, connect_timeout: float = WAIT, read_timeout: float = WAIT) -> Upstream:
        url = URL(f"http://127.0.0.1:{self.port}{BASE}")
        return Upstream.of(url, ssl.create_default_context(), connect_timeout, read_timeout)

    @property
    def requests(self) -> list[Received]:
        return [r for conn in self.connections for r in conn.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        peer_port = int(writer.get_extra_info("peername")[1])
        conn = Conn(len(self.connections), peer_port, reader, writer)
        self.connections.append(conn)
        try:
            while not writer.is_closing():
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial:
                        conn.eof.set()
                    return
                conn.requests.append(Received(head))
                await self.answer(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            conn.eof.set()  # the client went away in the middle of a request
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for conn in self.connections:
            conn.writer.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


UpstreamFactory = Callable[[Answer], Awaitable[RawUpstream]]
PoolFactory = Callable[..., UpstreamPool]


@pytest.fixture
async def raw_upstream() -> AsyncIterator[UpstreamFactory]:
    """Starts raw upstreams answering with the given function; stops them after."""
    started: list[RawUpstream] = []

    async def factory(answer: Answer) -> RawUpstream:
        upstream = RawUpstream(answer)
        await upstream.start()
        started.append(upstream)
        return upstream

    yield factory
    for upstream in started:
        await upstream.stop()


@pytest.fixture
async def make_pool() -> AsyncIterator[PoolFactory]:
    """Pools with the given limit and max_idle; closed after the test."""
    pools: list[UpstreamPool] = []

    def factory(limit: int = 10, max_idle: float = 10.0) -> UpstreamPool:
        pool = UpstreamPool(limit=limit, max_idle=max_idle)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        await pool.close()


def host_headers(up: Upstream) -> CIMultiDict[str]:
    return CIMultiDict([("Host", up.host_header)])


async def start(
    pool: UpstreamPool,
    up: Upstream,
    method: str = "GET",
    target: str = "/x",
    headers: CIMultiDict[str] | None = None,
    body: bytes | AsyncIterator[bytes] | None = None,
) -> UpstreamResponse:
    """Send a call and return its answer's head, bounded by WAIT."""
    async with asyncio.timeout(WAIT):
        return await pool.request(
            up, method, target, headers if headers is not None else host_headers(up), body
        )


async def call(
    pool: UpstreamPool, up: Upstream, method: str = "GET", target: str = "/x"
) -> tuple[int, bytes]:
    """One whole call: status and body, the response read to the end and released."""
    response = await start(pool, up, method, target)
    try:
        async with asyncio.timeout(WAIT):
            return response.status, await response.content.read()
    finally:
        response.release()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    """A streamed request body: ``parts`` one by one, with no length known ahead."""
    for part in parts:
        yield part


async def wait_for(event: asyncio.Event) -> None:
    async with asyncio.timeout(WAIT):
        await event.wait()


# --- reuse and idle connections ------------------------------------------------------


async def test_sequential_calls_reuse_one_connection(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """Three calls one after another go over one TCP connection, each with its answer."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(), upstream.upstream()
    answers = [await call(pool, up) for _ in range(3)]
    assert answers == [(200, b"conn 0 call 1"), (200, b"conn 0 call 2"), (200, b"conn 0 call 3")]
    assert len({conn.peer_port for conn in upstream.connections}) == 1


async def test_sequential_calls_at_a_limit_of_one_never_wait_for_a_slot(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """Each call on the idle connection gives its slot back whole: with a limit of one,
    call after call is served on conn 0 (a slot counted twice would leave the third
    waiting for a slot no one holds)."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(limit=1), upstream.upstream()
    for n in (1, 2, 3, 4):
        assert await call(pool, up) == (200, b"conn 0 call %d" % n)


async def test_connection_idle_past_max_idle_is_not_reused(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """After sitting idle longer than max_idle, a connection is not used for the next call."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(max_idle=0.2), upstream.upstream()
    assert await call(pool, up) == (200, b"conn 0 call 1")
    await asyncio.sleep(0.4)
    assert await call(pool, up) == (200, b"conn 1 call 1")
    assert len({conn.peer_port for conn in upstream.connections}) == 2


async def test_idle_sweep_closes_a_connection_past_max_idle(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """With no further call, a connection idle past max_idle is closed by the pool."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(max_idle=0.2), upstream.upstream()
    await call(pool, up)
    (conn,) = upstream.connections
    await wait_for(conn.eof)


async def test_connection_idle_past_read_timeout_serves_the_next_call(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """Idle longer than read_timeout, a pooled connection still carries the next call.

    The first answer is one byte over the body buffer's high-water mark and arrives
    whole before it is read, so the transport pauses on its last byte and reading it
    resumes the transport after the body ended: aiohttp restarts its read timer then,
    and in the pool that timer must not fail the idle connection.
    """
    size = 2 * 2**18 + 1  # READ_BUFSIZE's high-water mark, plus one byte

    async def answer(conn: Conn) -> None:
        await conn.read_body()
        if len(conn.requests) == 1:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            await conn.send(b"x" * size)
        else:
            await answer_ok(conn)

    upstream = await raw_upstream(answer)
    read_timeout = 1.0  # long enough for the whole first answer on a busy machine
    pool, up = make_pool(max_idle=30.0), upstream.upstream(read_timeout=read_timeout)
    response = await start(pool, up)
    async with asyncio.timeout(WAIT):
        # Let the whole body arrive, unread; no event tells of bytes buffered, so poll.
        while response.content.total_bytes < size:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert len(await response.content.read()) == size
    response.release()
    await asyncio.sleep(2 * read_timeout)  # idle past read_timeout: the time is the point
    assert await call(pool, up) == (200, b"conn 0 call 2")
    assert len(upstream.connections) == 1


async def test_connection_closed_by_the_upstream_while_idle_is_not_reused(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """An idle connection the upstream closed is dropped: the next call opens a new one."""
    hang_up = asyncio.Event()

    async def answer(conn: Conn) -> None:
        await answer_ok(conn)
        if conn.index == 0:
            await hang_up.wait()
            conn.writer.close()
            await conn.writer.wait_closed()

    upstream = await raw_upstream(answer)
    pool, up = make_pool(), upstream.upstream()
    assert await call(pool, up) == (200, b"conn 0 call 1")
    hang_up.set()
    await asyncio.sleep(0.2)  # idle: the upstream's FIN reaches the pooled connection
    assert await call(pool, up) == (200, b"conn 1 call 1")


# --- what goes out and what comes back ------------------------------------------------


async def test_interim_1xx_answers_are_skipped(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """A 103 Early Hints before the 200: the caller gets the 200, its headers and body."""

    async def answer(conn: Conn) -> None:
        await conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal")

    upstream = await raw_upstream(answer)
    pool, up = make_pool(), upstream.upstream()
    response = await start(pool, up)
    try:
        assert (response.status, response.reason) == (200, "OK")
        assert (b"X-Final", b"yes") in response.raw_headers
        assert b"Link" not in dict(response.raw_headers)
        async with asyncio.timeout(WAIT):
            assert await response.content.read() == b"final"
    finally:
        response.release()


async def test_request_head_goes_out_as_written(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """Base path + raw target untouched, Host the upstream's host:port first, headers in order."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(), upstream.upstream()
    assert up.host_header == f"127.0.0.1:{upstream.port}"
    headers = CIMultiDict(
        [("Host", up.host_header), ("X-Trace", "1"), ("Accept", "*/*"), ("x-trace", "2")]
    )
    response = await start(pool, up, "GET", "/a%2Fb?x=%20&y", headers)
    response.release()
    (request,) = upstream.requests
    assert request.head == (
        b"GET /base/a%2Fb?x=%20&y HTTP/1.1\r\n"
        b"Host: 127.0.0.1:" + str(upstream.port).encode() + b"\r\n"
        b"X-Trace: 1\r\n"
        b"Accept: */*\r\n"
        b"x-trace: 2\r\n"
        b"\r\n"
    )


async def test_post_without_body_sends_content_length_zero(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """A POST with no body announces an empty one: ``Content-Length: 0``."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(), upstream.upstream()
    assert await call(pool, up, "POST", "/p") == (200, b"conn 0 call 1")
    (request,) = upstream.requests
    assert request.head == (
        b"POST /base/p HTTP/1.1\r\nHost: " + up.host_header.encode() + b"\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


async def test_streamed_body_without_length_goes_chunked(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """A body given as an async iterator, with no Content-Length, is sent chunked."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(), upstream.upstream()
    response = await start(pool, up, "PUT", "/s", body=chunks(b"hello", b" world"))
    response.release()
    (request,) = upstream.requests
    assert request.head.endswith(b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert b"content-length" not in request.head.lower()
    assert request.raw_body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    assert request.body == b"hello world"


async def test_framing_fields_given_are_replaced_by_the_bodys_own(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """Framing comes from the body sent, never from the headers given: a streamed body
    goes chunked whatever Content-Length came with it (issue 11)."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(), upstream.upstream()
    headers = CIMultiDict([("Host", up.host_header), ("Content-Length", "5")])
    response = await start(pool, up, "PUT", "/s", headers, chunks(b"hello", b" world"))
    response.release()
    (request,) = upstream.requests
    assert request.head.endswith(b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert b"content-length" not in request.head.lower()
    assert request.body == b"hello world"


async def test_head_answer_with_content_length_leaves_the_connection_reusable(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """A HEAD answer's Content-Length announces no body: the next call gets its own answer."""

    async def answer(conn: Conn) -> None:
        if conn.requests[-1].head.startswith(b"HEAD "):
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        else:
            await answer_ok(conn)

    upstream = await raw_upstream(answer)
    pool, up = make_pool(), upstream.upstream()
    response = await start(pool, up, "HEAD", "/h")
    assert (b"Content-Length", b"1234") in response.raw_headers
    async with asyncio.timeout(WAIT):
        assert await response.content.read() == b""
    response.release()
    assert await call(pool, up) == (200, b"conn 0 call 2")
    assert len(upstream.connections) == 1


# --- the limit ---------------------------------------------------------------------


async def test_call_over_the_limit_waits_until_one_is_released(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """With limit=1 and an answer still held, a second call waits; release lets it go."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(limit=1), upstream.upstream()
    first = await start(pool, up)
    second = asyncio.create_task(call(pool, up))
    try:
        done, _ = await asyncio.wait({second}, timeout=0.3)
        assert not done, "the second call did not wait for the held connection"
        assert len(upstream.requests) == 1
        async with asyncio.timeout(WAIT):
            assert await first.content.read() == b"conn 0 call 1"
        first.release()
        async with asyncio.timeout(WAIT):
            assert await second == (200, b"conn 0 call 2")
    finally:
        second.cancel()


async def test_call_over_the_limit_fails_after_connect_timeout_as_no_free_connection(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """With limit=1 held and never released, a second call fails: NoFreeConnection, not a
    connect time-out (nothing was connecting)."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(limit=1), upstream.upstream(connect_timeout=SLOT_WAIT)
    first = await start(pool, up)
    try:
        with pytest.raises(NoFreeConnection):
            await start(pool, up)
        assert len(upstream.requests) == 1
    finally:
        first.release()


async def test_releasing_twice_frees_one_slot_only(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """A second release() of the same answer does not free a slot nobody gave back."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(limit=1), upstream.upstream(connect_timeout=SLOT_WAIT)
    first = await start(pool, up)
    await first.content.read()
    first.release()
    first.release()
    second = await start(pool, up)
    try:
        with pytest.raises(NoFreeConnection):
            await start(pool, up)
    finally:
        second.release()


async def test_an_origin_at_its_limit_does_not_hold_up_another_origin(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """The limit is per origin: with one upstream's only connection held, another's call
    is answered, and the held one's next call still waits for its own."""
    held, other = await raw_upstream(answer_ok), await raw_upstream(answer_ok)
    pool = make_pool(limit=1)
    busy_up = held.upstream(connect_timeout=SLOT_WAIT)
    first = await start(pool, busy_up)
    try:
        assert await call(pool, other.upstream()) == (200, b"conn 0 call 1")
        with pytest.raises(NoFreeConnection):
            await start(pool, busy_up)
    finally:
        first.release()


class CountedLookUps:
    """Every name look-up the event loop is asked for, counted by name; each is made."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.names: list[str] = []
        self._real = loop.getaddrinfo

    async def getaddrinfo(self, host: str, *args: object, **kwargs: object) -> object:
        self.names.append(host)
        return await self._real(host, *args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def look_ups(monkeypatch: pytest.MonkeyPatch) -> CountedLookUps:
    """Counts the look-ups this test's event loop makes (the system resolver still answers)."""
    loop = asyncio.get_running_loop()
    counted = CountedLookUps(loop)
    monkeypatch.setattr(loop, "getaddrinfo", counted.getaddrinfo)
    return counted


async def test_concurrent_cold_calls_to_one_name_make_one_look_up(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory, look_ups: CountedLookUps
) -> None:
    """50 calls at once to ``localhost``, none pooled yet: one look-up, 50 answers."""
    upstream = await raw_upstream(answer_ok)
    url = URL(f"http://localhost:{upstream.port}{BASE}")
    up = Upstream.of(url, ssl.create_default_context(), WAIT, WAIT)
    pool = make_pool(limit=100)
    answers = await asyncio.gather(*(call(pool, up) for _ in range(50)))
    assert [status for status, _ in answers] == [200] * 50
    assert len(upstream.connections) == 50
    assert look_ups.names == ["localhost"]


async def test_a_name_is_looked_up_again_once_its_answer_is_older_than_the_ttl(
    raw_upstream: UpstreamFactory, look_ups: CountedLookUps
) -> None:
    """Within the ttl new connections use the kept answer; after it, the name is asked again."""
    upstream = await raw_upstream(answer_ok)
    url = URL(f"http://localhost:{upstream.port}{BASE}")
    up = Upstream.of(url, ssl.create_default_context(), WAIT, WAIT)
    pool = UpstreamPool(limit=10, max_idle=0.0, resolver=Resolver(ttl=0.3))
    try:
        await call(pool, up)
        await call(pool, up)  # max_idle 0: a new connection, the kept answer
        assert look_ups.names == ["localhost"]
        await asyncio.sleep(0.5)
        await call(pool, up)
        assert look_ups.names == ["localhost", "localhost"]
        assert len(upstream.connections) == 3
    finally:
        await pool.close()


async def test_a_caller_cancelled_during_a_shared_look_up_leaves_it_to_the_others(
    look_ups: CountedLookUps,
) -> None:
    """Two callers share a look-up; the first is cancelled; the second still gets the
    addresses, from the one look-up."""
    resolver = Resolver()
    first = asyncio.create_task(resolver.resolve("localhost", 80))
    second = asyncio.create_task(resolver.resolve("localhost", 80))
    await asyncio.sleep(0)  # both are waiting on the look-up now
    first.cancel()
    async with asyncio.timeout(WAIT):
        addresses = await second
    assert first.cancelled()
    assert any(info[4][0] in ("127.0.0.1", "::1") for info in addresses)
    assert look_ups.names == ["localhost"]


async def test_a_failed_look_up_is_not_kept(
    make_pool: PoolFactory, look_ups: CountedLookUps
) -> None:
    """A name that does not resolve fails each call with its own look-up: no negative cache."""
    url = URL(f"http://no-such-host.invalid:80{BASE}")
    up = Upstream.of(url, ssl.create_default_context(), WAIT, WAIT)
    pool = make_pool()
    for _ in range(2):
        with pytest.raises(ConnectFailed):
            await start(pool, up)
    assert look_ups.names == ["no-such-host.invalid"] * 2


# --- failures ------------------------------------------------------------------------


async def test_an_upstream_named_by_host_name_is_resolved_and_reached(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """A host name (``localhost``) is resolved before connecting; 127.0.0.1 listens.

    Only the resolution is proven here: the RFC 8305 race between several addresses
    needs an unreachable one, which a loopback-only test cannot have."""
    upstream = await raw_upstream(answer_ok)
    url = URL(f"http://localhost:{upstream.port}{BASE}")
    up = Upstream.of(url, ssl.create_default_context(), WAIT, WAIT)
    response = await start(make_pool(), up)
    assert response.status == 200
    response.release()


async def test_refused_connection_raises_connect_failed(make_pool: PoolFactory) -> None:
    """Nothing listening on the upstream's port: ConnectFailed."""
    url = URL(f"http://127.0.0.1:{free_port()}{BASE}")
    up = Upstream.of(url, ssl.create_default_context(), WAIT, WAIT)
    with pytest.raises(ConnectFailed):
        await start(make_pool(), up)


async def test_malformed_status_line_raises_malformed_answer(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """An answer whose status line is not HTTP: MalformedAnswer."""

    async def answer(conn: Conn) -> None:
        await conn.send(b"HTTP/1.1 two-hundred OK\r\nContent-Length: 0\r\n\r\n")

    upstream = await raw_upstream(answer)
    with pytest.raises(MalformedAnswer):
        await start(make_pool(), upstream.upstream())


async def test_upstream_closing_before_answering_raises_server_disconnected(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """The upstream reads the request and closes without a word: ServerDisconnectedError."""

    async def answer(conn: Conn) -> None:
        conn.writer.close()

    upstream = await raw_upstream(answer)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await start(make_pool(), upstream.upstream())


async def test_upstream_that_never_answers_raises_socket_timeout(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """No answer within read_timeout: SocketTimeoutError (not the test's own bound)."""
    upstream = await raw_upstream(Conn.wait_for_eof)
    with pytest.raises(aiohttp.SocketTimeoutError):
        await start(make_pool(), upstream.upstream(read_timeout=0.3))


# --- when a connection goes back --------------------------------------------------------


async def test_released_before_its_end_the_connection_is_not_reused(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """An answer released with its body still coming: the connection is closed, not pooled."""

    async def answer(conn: Conn) -> None:
        if conn.index == 0:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf.")
            await conn.wait_for_eof()
        else:
            await answer_ok(conn)

    upstream = await raw_upstream(answer)
    pool, up = make_pool(), upstream.upstream()
    response = await start(pool, up)
    assert response.status == 200
    response.release()
    assert await call(pool, up) == (200, b"conn 1 call 1")
    await wait_for(upstream.connections[0].eof)


async def test_closed_answer_does_not_return_its_connection(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """close() on a fully read answer still closes its connection: the next call opens one."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(), upstream.upstream()
    response = await start(pool, up)
    async with asyncio.timeout(WAIT):
        assert await response.content.read() == b"conn 0 call 1"
    response.close()
    assert await call(pool, up) == (200, b"conn 1 call 1")
    await wait_for(upstream.connections[0].eof)


async def test_an_upstream_that_stops_reading_a_streamed_body_times_out(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """Head taken, body never read, no answer: SocketTimeoutError after read_timeout, no hang."""

    async def large_body() -> AsyncIterator[bytes]:
        for _ in range(1024):  # 64 MiB: far more than the socket buffers between us hold
            yield b"x" * 65536

    async def answer(conn: Conn) -> None:
        await asyncio.Event().wait()  # neither reads nor answers, until the test ends

    upstream = await raw_upstream(answer)
    pool, up = make_pool(), upstream.upstream(read_timeout=0.3)
    with pytest.raises(aiohttp.SocketTimeoutError):
        await start(pool, up, "PUT", "/upload", body=large_body())


async def test_an_upstream_silent_after_an_interim_answer_times_out(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """103 Early Hints, then nothing: SocketTimeoutError after read_timeout, no hang."""

    async def answer(conn: Conn) -> None:
        await conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n")
        await asyncio.Event().wait()

    upstream = await raw_upstream(answer)
    pool, up = make_pool(), upstream.upstream(read_timeout=0.3)
    with pytest.raises(aiohttp.SocketTimeoutError):
        await start(pool, up)


async def test_an_early_answer_that_stalls_while_its_upload_stalls_times_out(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """An answer that starts before the upload ends, then stalls as the upload does, ends
    in SocketTimeoutError once read_timeout passes: the relay never waits forever."""

    async def large_body() -> AsyncIterator[bytes]:
        for _ in range(1024):
            yield b"x" * 65536

    async def answer(conn: Conn) -> None:
        await asyncio.sleep(0.1)  # the upload stalls first (64 KiB in, nothing more read)
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await asyncio.Event().wait()  # 10 of 100 bytes, and never any more

    upstream = await raw_upstream(answer)
    pool, up = make_pool(), upstream.upstream(read_timeout=0.3)
    response = await start(pool, up, "PUT", "/upload", body=large_body())
    try:
        assert response.status == 200
        with pytest.raises(aiohttp.SocketTimeoutError):
            async with asyncio.timeout(WAIT):
                await response.content.read()
    finally:
        response.close()


async def test_early_answer_during_a_streamed_body_is_returned_and_not_reused(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """A 413 sent while the body still streams reaches the caller; its connection is dropped."""
    more = asyncio.Event()

    async def endless_body() -> AsyncIterator[bytes]:
        yield b"first chunk"
        await more.wait()
        yield b"too late"

    async def answer(conn: Conn) -> None:
        if conn.index == 0:
            await conn.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
            await conn.wait_for_eof()
        else:
            await answer_ok(conn)

    upstream = await raw_upstream(answer)
    pool, up = make_pool(), upstream.upstream()
    try:
        response = await start(pool, up, "PUT", "/upload", body=endless_body())
        assert response.status == 413
        async with asyncio.timeout(WAIT):
            assert await response.content.read() == b"big!"
        response.release()
        assert await call(pool, up) == (200, b"conn 1 call 1")
        await wait_for(upstream.connections[0].eof)
    finally:
        more.set()


async def test_pool_close_closes_idle_connections(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """After pool.close(), the upstream sees its idle connections end."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(), upstream.upstream()
    await call(pool, up)
    await call(pool, up, target="/y")
    (conn,) = upstream.connections
    assert not conn.eof.is_set()
    await pool.close()
    await wait_for(conn.eof)


# --- found while writing these: an early answer left its body task running ------------


async def test_release_of_an_early_answer_stops_sending_the_body(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """Released while its body still streams, a call stops pulling that body."""
    more, stopped = asyncio.Event(), asyncio.Event()

    async def endless_body() -> AsyncIterator[bytes]:
        try:
            yield b"first chunk"
            await more.wait()
            yield b"too late"
        finally:
            stopped.set()

    async def answer(conn: Conn) -> None:
        await conn.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        await conn.wait_for_eof()

    upstream = await raw_upstream(answer)
    pool, up = make_pool(), upstream.upstream()
    try:
        response = await start(pool, up, "PUT", "/upload", body=endless_body())
        assert response.status == 413
        response.release()
        async with asyncio.timeout(WAIT):  # a stopped task ends at once
            await stopped.wait()
    finally:
        more.set()


async def test_early_answer_to_a_streamed_body_logs_no_error_in_the_proxy(
    raw_upstream: UpstreamFactory, emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """Through the proxy: an upstream 413 before a client's chunked body ended is no error.

    The body task left running still waits on the client's body, so aiohttp's server,
    draining that body after the handler, fails with "readany() called while another
    coroutine is already waiting" and logs it as an unhandled exception.
    """

    async def answer(conn: Conn) -> None:
        if conn.index == 0:
            await conn.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
            await conn.wait_for_eof()
        else:
            await answer_ok(conn)

    upstream = await raw_upstream(answer)
    config = make_config(
        emulator.token_url, f"http://127.0.0.1:{upstream.port}", route={"auth": "none"}
    )
    proxy = await start_proxy(config)
    reader, writer = await asyncio.open_connection(*proxy.address)
    try:
        async with asyncio.timeout(WAIT):
            writer.write(b"PUT /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"5\r\nhello\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 413 ")
            assert await reader.readexactly(4) == b"big!"
            # Finish the body and ask again: either answered or closed, the proxy is done
            # with the first call, and anything it logs about it is logged by then.
            writer.write(b"5\r\nworld\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await reader.read(1 << 16)
    finally:
        writer.close()
    errors = [line for line in proxy.logs.lines() if line.get("level") == "error"]
    assert errors == []


# --- a pooled connection the upstream closed just before reuse ---------------------------


async def hang_up_on_second_call(conn: Conn) -> None:
    """Conn 0 answers its first call keep-alive, then reads the next and closes unanswered."""
    if conn.index == 0 and len(conn.requests) == 2:
        await conn.read_body()
        conn.writer.close()
        return
    await answer_ok(conn)


async def reset_on_second_call(conn: Conn) -> None:
    """As ``hang_up_on_second_call``, with a TCP reset (SO_LINGER 0) instead of a FIN."""
    if conn.index == 0 and len(conn.requests) == 2:
        await conn.read_body()
        sock = conn.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.writer.transport.abort()
        return
    await answer_ok(conn)


@pytest.mark.parametrize("answer", [hang_up_on_second_call, reset_on_second_call])
@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
async def test_idempotent_call_on_a_stale_connection_is_resent_once_on_a_new_one(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory, answer: Answer, method: str
) -> None:
    """The reused connection fails before a byte of answer: the call goes again, on conn 1."""
    upstream = await raw_upstream(answer)
    pool, up = make_pool(), upstream.upstream()
    assert await call(pool, up) == (200, b"conn 0 call 1")
    body = b"same" if method == "PUT" else None
    headers = host_headers(up)
    if body is not None:
        headers["Content-Length"] = str(len(body))
    response = await start(pool, up, method, headers=headers, body=body)
    try:
        assert response.status == 200
        assert response.retried
        if method != "HEAD":
            async with asyncio.timeout(WAIT):
                assert await response.content.read() == b"conn 1 call 1"
    finally:
        response.release()
    second, resent = upstream.connections[0].requests[1], upstream.connections[1].requests[0]
    assert resent.head == second.head
    assert resent.body == second.body == (body or b"")


async def test_upstream_closing_an_idle_connection_just_before_reuse_is_resent(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """The upstream closes its idle side and the next call is written before the pool
    hears of it (no turn of the event loop between): the call is resent on conn 1."""
    upstream = await raw_upstream(answer_ok)
    pool, up = make_pool(), upstream.upstream()
    assert await call(pool, up) == (200, b"conn 0 call 1")
    upstream.connections[0].writer.close()
    assert await call(pool, up) == (200, b"conn 1 call 1")
    assert len(upstream.connections) == 2


async def test_a_call_that_waited_for_a_stale_connection_is_resent_too(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """At the limit, a call waits and is then given the released connection, which the
    upstream closes unanswered: that call is resent on a new connection as well."""
    upstream = await raw_upstream(hang_up_on_second_call)
    pool, up = make_pool(limit=1), upstream.upstream()
    first = await start(pool, up)
    second = asyncio.create_task(call(pool, up))
    try:
        done, _ = await asyncio.wait({second}, timeout=0.3)
        assert not done, "the second call did not wait for the held connection"
        async with asyncio.timeout(WAIT):
            assert await first.content.read() == b"conn 0 call 1"
        first.release()
        async with asyncio.timeout(WAIT):
            assert await second == (200, b"conn 1 call 1")
    finally:
        second.cancel()
    assert upstream.connections[1].requests[0].head == upstream.connections[0].requests[1].head


async def hang_up_on_any_second_call(conn: Conn) -> None:
    """Every connection answers its first call keep-alive, then closes on the next."""
    if len(conn.requests) == 2:
        await conn.read_body()
        conn.writer.close()
        return
    await answer_ok(conn)


async def test_a_resent_call_goes_on_a_new_connection_not_on_another_idle_one(
    raw_upstream: UpstreamFactory, make_pool: PoolFactory
) -> None:
    """Two idle connections, both stale: the call that met the first is resent on a
    new connection (conn 2), not on the other idle one, which would fail it too."""
    upstream = await raw_upstream(hang_up_on_any_second_call)
    pool, up = make_pool(), upstream.upstream()
    held = [await start(pool, up), await start(pool, up)]
    for response in held:
        async with asyncio.timeout(WAIT):
            await response.content.read()
        response.release()
    assert len(upstream.connections) == 2
    assert await call(pool, up) == (200, b"conn 2 call 1")


async def partial_answer_on_second_call(conn: Conn) -> None:
    """Conn 0's second call gets the start of a status line, then the connection closes."""
    if conn.index == 0 and len(conn.requests) == 2:
        await conn.read_body()
        await conn.send(b"HTTP/1.1 20")
        conn.writer.close()
        return
    await answer_ok(conn)


@pytest.mark.parametrize(
    ("method", "body", "answer"),
    [
        ("POST", b'{"amount": 100}', hang_up_on_second_call),
        ("POST", None, hang_up_on_second_call),
        ("PATCH", b'{"amount": 100}', reset_on_second_call),
        ("PUT", "streamed", hang_up_on_second_call),
        ("GET", None, partial_answer_on_second_call),
    ],
    ids=["POST", "POST-no-body", "PATCH", "PUT-streamed", "GET-answer-begun"],
)
async def test_a_call_that_may_not_be_repeated_is_not_resent_on_a_stale_connection(
    raw_upstream: UpstreamFactory,
    make_pool: PoolFactory,
    method: str,
    body: bytes | str | None,
    answer: Answer,
) -> None:
    """POST and PATCH, a streamed body, or an answer already begun: the failure stands,
    and the upstream received the call once."""
    upstream = await raw_upstream(answer)
    pool, up = make_pool(), upstream.upstream()
    assert await call(pool, up) == (200, b"conn 0 call 1")
    sent = chunks(b"not ", b"twice") if body == "streamed" else body
    assert not isinstance(sent, str)
    with pytest.raises(aiohttp.ClientError):
        await start(pool, up, method, body=sent)
    assert [r.head.split(b" ")[0] for r in upstream.requests] == [b"GET", method.encode()]
    assert len(upstream.connections) == 1


async def test_through_the_proxy_a_get_on_a_stale_connection_is_answered_and_logged(
    raw_upstream: UpstreamFactory, emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """The client gets the upstream's 200, and the call's one line says it was resent."""
    upstream = await raw_upstream(hang_up_on_second_call)
    config = make_config(
        emulator.token_url, f"http://127.0.0.1:{upstream.port}", route={"auth": "none"}
    )
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession() as client:
        for path in ("/first", "/second"):
            async with client.get(proxy.at(path)) as response:
                assert response.status == 200
    assert upstream.connections[1].requests[0].head.startswith(b"GET /second ")
    lines = proxy.logs.events("request_completed")
    assert [line.get("retried_stale_connection") for line in lines] == [None, "true"]
    assert all("error" not in line and line["level"] == "info" for line in lines)


async def test_through_the_proxy_a_post_on_a_stale_connection_is_not_resent(
    raw_upstream: UpstreamFactory, emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """A POST on a connection the upstream dropped gets 502; the upstream saw it once."""
    upstream = await raw_upstream(hang_up_on_second_call)
    config = make_config(
        emulator.token_url, f"http://127.0.0.1:{upstream.port}", route={"auth": "none"}
    )
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.at("/first")) as response:
            assert response.status == 200
        async with client.post(proxy.at("/pay"), data=b'{"amount": 100}') as response:
            assert response.status == 502
            assert response.content_type == "application/problem+json"
    assert [r.head.split(b" ")[:2] for r in upstream.requests] == [
        [b"GET", b"/first"],
        [b"POST", b"/pay"],
    ]
    (_, post_line) = proxy.logs.events("request_completed")
    assert post_line["error"] == "upstream_ServerDisconnectedError"
    assert "retried_stale_connection" not in post_line


async def test_through_the_proxy_a_saturated_upstream_gives_503_busy_and_spares_others(
    raw_upstream: UpstreamFactory, emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """POOL_SIZE calls stuck on one upstream: a call to another route is answered 200, and
    one more to the stuck upstream gets 503 ``upstream_busy`` with Retry-After."""
    all_stuck, let_go = asyncio.Event(), asyncio.Event()

    async def stall(conn: Conn) -> None:
        await conn.read_body()
        if len(slow.requests) == POOL_SIZE:
            all_stuck.set()
        await let_go.wait()
        await answer_ok(conn)

    slow, fast = await raw_upstream(stall), await raw_upstream(answer_ok)
    # connect_timeout bounds each of the 256 connects (made at once) and the wait of the
    # one more call: SLOT_WAIT, which a connect on a busy machine does not run out
    limits = {"auth": "none", "connect_timeout": SLOT_WAIT, "read_timeout": 60}
    routes = [
        {"prefix": "/slow", "upstream": f"http://127.0.0.1:{slow.port}", **limits},
        {"prefix": "/fast", "upstream": f"http://127.0.0.1:{fast.port}", **limits},
    ]
    server = {"max_connections_per_client": POOL_SIZE + 1}  # every client is 127.0.0.1
    config = make_config(emulator.token_url, server=server, extra={"routes": routes})
    proxy = await start_proxy(config)
    clients = []
    try:
        for n in range(POOL_SIZE):
            _, writer = await asyncio.open_connection(*proxy.address)
            writer.write(b"GET /slow/%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
            clients.append(writer)
        await wait_for(all_stuck)
        async with aiohttp.ClientSession() as client:
            async with client.get(proxy.at("/fast/ok")) as response:
                assert response.status == 200
                assert await response.read() == b"conn 0 call 1"
            async with client.get(proxy.at("/slow/one-more")) as response:
                assert response.status == 503
                assert response.content_type == "application/problem+json"
                assert response.headers["Retry-After"] == "1"
                assert (await response.json(content_type=None))["status"] == 503
    finally:
        let_go.set()
        for writer in clients:
            writer.close()
    busy = [line for line in proxy.logs.events("request_completed") if line["status"] == 503]
    assert [(line["path"], line["error"], line["level"]) for line in busy] == [
        ("/slow/one-more", "upstream_busy", "warning")
    ]
    assert len(slow.requests) == POOL_SIZE


async def test_through_the_proxy_a_client_gone_while_a_401_is_read_frees_its_connection(
    raw_upstream: UpstreamFactory, emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """A client that leaves while the proxy reads a 401's body (to tell what was
    refused) does not take a connection slot with it: the upstream connection is
    closed, so the origin's limit is not worn down one leaver at a time."""
    answered, upstream_closed = asyncio.Event(), asyncio.Event()

    async def slow_401(conn: Conn) -> None:
        await conn.read_body()
        answered.set()
        await conn.send(
            b"HTTP/1.1 401 Unauthorized\r\n"
            b'WWW-Authenticate: Bearer error="invalid_token"\r\n'
            b"Content-Length: 100\r\n\r\nthe start"
        )
        if await conn.reader.read() == b"":
            upstream_closed.set()

    upstream = await raw_upstream(slow_401)
    proxy = await start_proxy(make_config(emulator.token_url, f"http://127.0.0.1:{upstream.port}"))
    _, writer = await asyncio.open_connection(*proxy.address)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_for(answered)
    writer.transport.abort()
    await wait_for(upstream_closed)
