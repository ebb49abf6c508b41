"""Upstream connections: HTTP/1.1 to the routes' hosts, pooled, one call at a time each.

aiohttp's ``ClientSession`` spends about 200 µs of CPU on every call here (a request
object, auto headers, cookie filtering, URL building, timer contexts, traces), more than
the rest of the proxy together; a proxy forwards a request it already has and needs
none of it. The pool keeps the parts of aiohttp's client that carry the risk, its
connection protocol (``ResponseHandler``: the llhttp response parser, flow control,
read time-outs, payload errors) and its ``StreamWriter``, and does the rest itself:
a pool per origin with its own limit, name look-ups shared and kept briefly
(``proxy.resolver``), the request head and its framing, and when a connection may be
reused. What happens on one connection (connecting, the answer's head read and
checked, 1xx answers, a streamed body sent) is ``proxy.upstream_connection``.

A call is resent only as HTTP/1.1 allows (RFC 9112 §9.3.1) and aiohttp's connector did:
once, on a new connection, when the pooled connection it went out on failed before a
byte of answer came back (the upstream had closed it while idle), its method is
idempotent and its body was held. POST and PATCH are never resent.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, Callable
from typing import Final

import aiohttp
from aiohttp import hdrs
from multidict import CIMultiDict

from proxy.aiohttp_seam import RawResponseMessage, StreamWriter, hold_head
from proxy.resolver import Resolver
from proxy.upstream_connection import (
    FIELD_BYTES,
    Connection,
    Interim,
    Key,
    Upstream,
    connect,
    read_head,
    send_body,
)

READ_BUFSIZE: Final = 2**18  # what a download is read in, at most, per wake-up
#: Methods whose requests carry a body: without one they get Content-Length: 0,
#: as aiohttp's client sends (some gateways answer 411 otherwise).
BODY_METHODS: Final = frozenset({hdrs.METH_POST, hdrs.METH_PUT, hdrs.METH_PATCH})
#: Methods a call may be resent with when its pooled connection turned out closed.
RESENDABLE: Final = frozenset(
    {hdrs.METH_GET, hdrs.METH_HEAD, hdrs.METH_OPTIONS, hdrs.METH_PUT, hdrs.METH_DELETE}
)
#: How a connection the upstream closed while idle fails the call written on it.
STALE_CONNECTION_ERRORS: Final = (
    aiohttp.ServerDisconnectedError,  # its FIN: closed, nothing came
    aiohttp.ClientOSError,  # its RST, as aiohttp reports it when reading
    ConnectionResetError,  # writing on a transport that closed meanwhile
)

Body = bytes | AsyncIterable[bytes] | None


class NoFreeConnection(aiohttp.ClientError):
    """Every connection the pool may hold to the upstream stayed in use too long."""


def _held(body: Body) -> bool:
    """A body the pool has whole, so it can be sent again (not a stream)."""
    return body is None or isinstance(body, bytes)


class UpstreamResponse:
    """An answer's head, its body as an aiohttp ``StreamReader``, and its connection."""

    __slots__ = (
        "_body_task",
        "_key",
        "_pool",
        "_proto",
        "content",
        "head",
        "raw_headers",
        "reason",
        "retried",
        "status",
        "waited",
    )

    def __init__(
        self,
        pool: UpstreamPool,
        key: Key,
        proto: Connection,
        head: RawResponseMessage,
        content: aiohttp.StreamReader,
        body_task: asyncio.Task[None] | None,
    ) -> None:
        self._pool, self._key, self._body_task = pool, key, body_task
        self._proto: Connection | None = proto
        self.head = head
        self.status: int = head.code
        self.reason: str = head.reason
        self.raw_headers = head.raw_headers
        self.content = content
        #: Sent a second time, on a new connection: the pooled one was found closed.
        self.retried = False
        #: Seconds from the request's head written to the answer's head read.
        self.waited = 0.0

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if it can carry another call.

        A request body still being sent (the upstream answered before it ended) stops.
        """
        task = self._body_task
        sent = task is None or (task.done() and not task.cancelled())
        self._done(reusable=sent and self.content.is_eof())

    def close(self) -> None:
        """Done with it, and its connection is not to be used again."""
        self._done(reusable=False)

    def _done(self, reusable: bool) -> None:
        if self._proto is None:  # given back already: a slot is freed once only
            return
        if self._body_task is not None and not self._body_task.done():
            self._body_task.cancel()
        proto, self._proto = self._proto, None
        self._pool.give_back(self._key, proto, reusable)


class _Origin:
    """One upstream origin's connections: in use, idle (newest last), and calls waiting."""

    __slots__ = ("busy", "idle", "waiters")

    def __init__(self) -> None:
        self.busy = 0
        self.idle: list[tuple[Connection, float]] = []
        self.waiters: deque[asyncio.Future[None]] = deque()


class UpstreamPool:
    """Keep-alive connections per upstream origin (host, port, TLS context), at most
    ``limit`` of them in use at once for each: a slow upstream holds up only its own
    calls. A call that finds none free within ``connect_timeout`` fails with
    ``NoFreeConnection``."""

    def __init__(self, limit: int, max_idle: float, resolver: Resolver | None = None) -> None:
        self.limit = limit
        self.max_idle = max_idle
        self.resolver = resolver or Resolver()
        self._origins: dict[Key, _Origin] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        #: Told ``True`` when a call starts waiting for a free connection, ``False`` when
        #: it has one (tracing's pool-wait events); None: nobody asks.
        self.on_wait: Callable[[bool], None] | None = None

    async def request(
        self,
        up: Upstream,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: Body,
        interim: Interim | None = None,
    ) -> UpstreamResponse:
        """Send the call and return the answer's head; the body is left to stream.

        A call that met a connection the upstream had closed while idle is sent again,
        once, on a new connection, if that is safe (see the module's docstring).
        ``interim`` is given each interim (1xx) answer's head as it comes.
        """
        origin = self._origins.get(up.key) or self._origins.setdefault(up.key, _Origin())
        proto = self._take_idle(origin) if origin.busy < self.limit else None
        if proto is None:
            proto = await self._acquire(up, origin)
        else:  # the common case, without a coroutine
            origin.busy += 1
        try:
            return await self._send(up, proto, method, target, headers, body, interim)
        except STALE_CONNECTION_ERRORS:
            if not proto.reused or proto.answered or method not in RESENDABLE or not _held(body):
                raise
        proto = await self._acquire(up, origin, fresh=True)
        response = await self._send(up, proto, method, target, headers, body, interim)
        response.retried = True
        return response

    async def _send(
        self,
        up: Upstream,
        proto: Connection,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: Body,
        interim: Interim | None,
    ) -> UpstreamResponse:
        """Send the call once on ``proto``; on failure the connection is closed."""
        proto.expect_answer()
        body_task = None
        try:
            proto.set_response_params(
                skip_payload=method == hdrs.METH_HEAD,
                read_until_eof=True,
                auto_decompress=False,
                read_timeout=up.read_timeout,
                read_bufsize=READ_BUFSIZE,
            )
            writer = StreamWriter(proto, asyncio.get_running_loop())
            _frame(headers, method, body)
            request_head = _request_head(f"{method} {up.base_path}{target} HTTP/1.1", headers)
            written = time.perf_counter()
            if body is None or isinstance(body, bytes):
                # One write; the read timer (started now) bounds an upstream that takes
                # neither the body nor answers.
                await writer.write(request_head + body if body else request_head, drain=False)
                proto.start_timeout()
            else:
                # Held as StreamWriter.write_headers holds its own, to go with the first
                # chunk: a body that fails before it has sent nothing upstream.
                hold_head(writer, request_head)
                writer.enable_chunking()
                body_task = asyncio.create_task(send_body(proto, writer, body, up.read_timeout))
            head, content = await read_head(proto, body_task, interim)
        except BaseException:
            if body_task is not None:
                body_task.cancel()
            self.give_back(up.key, proto, reusable=False)
            raise
        response = UpstreamResponse(self, up.key, proto, head, content, body_task)
        response.waited = time.perf_counter() - written
        return response

    async def _acquire(self, up: Upstream, origin: _Origin, fresh: bool = False) -> Connection:
        """A connection for one call: an idle one if there is (and not ``fresh``), else
        a new one."""
        if origin.busy >= self.limit:
            if self.on_wait is not None:
                self.on_wait(True)
            await self._wait_for_slot(up, origin)
            if self.on_wait is not None:
                self.on_wait(False)
        origin.busy += 1
        proto = None if fresh else self._take_idle(origin)
        if proto is not None:
            return proto
        try:
            return await connect(up, self.resolver)
        except BaseException:
            self._free_slot(origin)
            raise

    async def _wait_for_slot(self, up: Upstream, origin: _Origin) -> None:
        """Until fewer than ``limit`` of the origin's connections are in use; bounded by
        connect_timeout."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(up.connect_timeout):
                while origin.busy >= self.limit:
                    waiter = loop.create_future()
                    origin.waiters.append(waiter)
                    try:
                        await waiter
                    except asyncio.CancelledError:
                        if waiter.done() and not waiter.cancelled():
                            _wake_next(origin)  # woken, then cancelled: pass the turn on
                        raise
        except TimeoutError:
            raise NoFreeConnection(
                f"all {self.limit} connections to {up.host} stayed in use"
                f" for {up.connect_timeout} s"
            ) from None

    def _take_idle(self, origin: _Origin) -> Connection | None:
        idle = origin.idle
        oldest_allowed = time.monotonic() - self.max_idle
        while idle:
            proto, since = idle.pop()
            if _fit_for_a_call(proto, since, oldest_allowed):
                return proto
            proto.close()
        return None

    def give_back(self, key: Key, proto: Connection, reusable: bool) -> None:
        """Pool the connection if it is clean and the pool is open; else close it."""
        origin = self._origins[key]
        self._free_slot(origin)
        if reusable and not self._closed and proto.is_connected() and not proto.should_close:
            # A read resumed after the body ended can restart aiohttp's read timer;
            # idle in the pool, that timer must not fail the connection's next call.
            proto.read_timeout = None
            proto.start_timeout()
            proto.reused = True
            origin.idle.append((proto, time.monotonic()))
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().call_later(self.max_idle, self._sweep)
        else:
            proto.close()

    def _free_slot(self, origin: _Origin) -> None:
        origin.busy -= 1
        _wake_next(origin)

    def _sweep(self) -> None:
        """Close connections idle longer than ``max_idle``; run again while any are left."""
        self._sweeper = None
        oldest_allowed = time.monotonic() - self.max_idle
        for origin in self._origins.values():
            keep = []
            for proto, since in origin.idle:
                if _fit_for_a_call(proto, since, oldest_allowed):
                    keep.append((proto, since))
                else:
                    proto.close()
            origin.idle = keep
        if any(origin.idle for origin in self._origins.values()):
            self._sweeper = asyncio.get_running_loop().call_later(self.max_idle, self._sweep)

    async def close(self) -> None:
        """Close every idle connection; connections in use close when given back."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for origin in self._origins.values():
            for proto, _ in origin.idle:
                proto.close()
            origin.idle = []


def _wake_next(origin: _Origin) -> None:
    while origin.waiters:
        waiter = origin.waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


def _frame(headers: CIMultiDict[str], method: str, body: Body) -> None:
    """The request's framing, from the body the pool sends and nothing else: a held body
    gets its length, a streamed one is chunked, none gets neither (``Content-Length: 0``
    for a method that carries a body). Framing fields in ``headers`` are replaced: a
    length the body does not have would let a request ride inside another."""
    headers.popall(hdrs.CONTENT_LENGTH, None)
    headers.popall(hdrs.TRANSFER_ENCODING, None)
    if isinstance(body, bytes):
        headers[hdrs.CONTENT_LENGTH] = str(len(body))
    elif body is not None:
        headers[hdrs.TRANSFER_ENCODING] = "chunked"
    elif method in BODY_METHODS:
        headers[hdrs.CONTENT_LENGTH] = "0"


def _request_head(line: str, headers: CIMultiDict[str]) -> bytes:
    """The request head, each value the very bytes the client sent.

    aiohttp's server parser decodes header bytes as UTF-8 with ``surrogateescape``, so
    encoding back the same way restores them, obs-text included (aiohttp's serializer
    drops such bytes; its pure-Python twin refuses them). As that serializer did, a
    control character or a line break inside a field (which would make a header, or a
    request, of its own) is refused: once the allowed bytes are taken out, only the
    line ends may be left.
    """
    fields = list(map(": ".join, headers.items()))  # no f-string per field: ~40 % cheaper
    head = ("\r\n".join([line, *fields]) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    if head.translate(None, FIELD_BYTES) != b"\r\n" * (len(fields) + 2):
        raise ValueError("a request header holds a control character")
    return head


def _fit_for_a_call(proto: Connection, since: float, oldest_allowed: float) -> bool:
    """An idle connection that may carry another call: young enough, open, and with
    nothing pending on it (no early bytes, no error from a timer or the peer)."""
    return since >= oldest_allowed and proto.is_connected() and not proto.should_close
