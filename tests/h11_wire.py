"""The raw wire both ends of a test speak, judged by h11 (a parser independent of aiohttp's).

``H11Upstream`` is a raw asyncio server on 127.0.0.1 that parses exactly what it
receives with h11 and answers with scripted bytes (``h11_upstream``: a fixture that
starts them); ``Client`` is a raw client connection whose answers h11 reads
(``clients``: a fixture that opens them). ``proxy_to`` puts the real proxy in front of
such an upstream; ``relay_one`` makes one call through it; ``scripted_proxy`` keeps one
proxy and upstream for every example of a hypothesis test (``shared``). Test modules
take the fixtures by name: ``h11_upstream = h11_wire.h11_upstream``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import orjson
import pytest
from hypothesis import HealthCheck, settings

from tests.conftest import ProxyFactory, RunningEmulator, RunningProxy, make_config

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
WAIT = 5.0  # the bound on any one wait here; every wait ends long before
OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"


# --------------------------------------------------------------------------- upstream


@dataclass
class Seen:
    """One request as h11 parsed it at the upstream."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names as sent (any case), values as sent
    body: bytes

    def values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Reply = Callable[[Seen], bytes]


def echo_target(seen: Seen) -> bytes:
    """200 whose body is the request's target and body length, for the client to check."""
    body = b"%s %d" % (seen.target, len(seen.body))
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class H11Upstream:
    """Parses every request it receives with h11; answers each with ``reply``'s bytes.

    Each connection's end is recorded: ``clean`` when the peer closed between requests
    with no byte left over, else the h11 error (a partial request, stray bytes).
    """

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[Seen] = []
        self.ends: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.ended: list[asyncio.Event] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        ended = asyncio.Event()
        self.ended.append(ended)
        leftover = b""
        try:
            while True:
                seen, leftover = await self._next_request(reader, leftover)
                if seen is None:
                    self.ends.append("clean")
                    return
                self.requests.append(seen)
                writer.write(self.reply(seen))
                await writer.drain()
        except h11.RemoteProtocolError as exc:
            self.ends.append(f"h11: {exc}")
        except (ConnectionError, OSError) as exc:
            self.ends.append(f"connection error: {exc!r}")
        finally:
            writer.close()
            ended.set()

    @staticmethod
    async def _next_request(
        reader: asyncio.StreamReader, leftover: bytes
    ) -> tuple[Seen | None, bytes]:
        """The next whole request and the bytes after it; None when the peer closed."""
        conn = h11.Connection(h11.SERVER)
        if leftover:  # (h11 takes b"" for the peer's close)
            conn.receive_data(leftover)
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(1 << 16))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                headers = list(request.headers.raw_items())
                seen = Seen(request.method, request.target, headers, bytes(body))
                return seen, conn.trailing_data[0]
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.wait_for_ends()

    async def wait_for_ends(self) -> None:
        """Until every connection accepted so far has ended (bounded)."""
        async with asyncio.timeout(WAIT):
            await asyncio.gather(*(ended.wait() for ended in self.ended))


UpstreamFactory = Callable[[Reply], Awaitable[H11Upstream]]


@pytest.fixture
async def h11_upstream() -> AsyncIterator[UpstreamFactory]:
    started: list[H11Upstream] = []

    async def factory(reply: Reply) -> H11Upstream:
        upstream = H11Upstream(reply)
        upstream.server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0)
        started.append(upstream)
        return upstream

    yield factory
    for upstream in started:
        await upstream.stop()


async def proxy_to(
    emulator: RunningEmulator, start_proxy: ProxyFactory, upstream: H11Upstream
) -> RunningProxy:
    """The proxy, bearer auth and our subscription key, in front of ``upstream``."""
    config = make_config(emulator.token_url, upstream.url, server={"max_body_bytes": 1 << 20})
    return await start_proxy(config)


# --------------------------------------------------------------------------- client


@dataclass
class Answer:
    """One answer as h11 parsed it at the client: interim answers, final head, body."""

    interim: list[h11.InformationalResponse]
    response: h11.Response
    body: bytes

    @property
    def status(self) -> int:
        return self.response.status_code

    def values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.response.headers.raw_items() if k.lower() == name.lower()]

    def names(self) -> set[bytes]:
        return {k.lower() for k, _ in self.response.headers.raw_items()}


@dataclass
class Client:
    """A raw client connection; answers are read in order with h11."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    buffer: bytes = b""
    raw: bytearray = field(default_factory=bytearray)

    @classmethod
    async def open(cls, proxy: RunningProxy) -> Client:
        reader, writer = await asyncio.open_connection(*proxy.address)
        return cls(reader, writer)

    async def send(self, *parts: bytes) -> None:
        for part in parts:
            self.writer.write(part)
            await self.writer.drain()

    async def answer(self, method: str = "GET") -> Answer:
        """The next answer on the connection, to a request made with ``method``."""
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "proxy.test")]))
        conn.send(h11.EndOfMessage())
        if self.buffer:
            conn.receive_data(self.buffer)
        interim: list[h11.InformationalResponse] = []
        response: h11.Response | None = None
        body = bytearray()
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    raise AssertionError(f"h11 refused the answer ({exc}): {self.raw!r}") from None
                if event is h11.NEED_DATA:
                    data = await self.reader.read(1 << 16)
                    if not data:
                        raise AssertionError(f"closed without a whole answer: {self.raw!r}")
                    self.raw += data
                    conn.receive_data(data)
                elif isinstance(event, h11.InformationalResponse):
                    interim.append(event)
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert response is not None
                    self.buffer = conn.trailing_data[0]
                    return Answer(interim, response, bytes(body))
                else:
                    raise AssertionError(f"unexpected {event!r}")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[[RunningProxy], Awaitable[Client]]]:
    opened: list[Client] = []

    async def factory(proxy: RunningProxy) -> Client:
        client = await Client.open(proxy)
        opened.append(client)
        return client

    yield factory
    for client in opened:
        await client.close()


def request(
    method: str, target: str, *headers: bytes, body: bytes | None = None, chunk: int = 0
) -> bytes:
    """A raw HTTP/1.1 request: ``headers`` as given, then the body framed by its
    length (``chunk`` 0) or chunked in pieces of ``chunk`` bytes."""
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: proxy.test", *headers]
    if body is None:
        return b"\r\n".join(lines) + b"\r\n\r\n"
    if not chunk:
        lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body
    lines.append(b"Transfer-Encoding: chunked")
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return b"\r\n".join(lines) + b"\r\n\r\n" + chunks + b"0\r\n\r\n"


async def relay_one(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
    reply: bytes,
    client_request: bytes = b"GET /x HTTP/1.1\r\nHost: proxy.test\r\n\r\n",
) -> tuple[Answer, Client]:
    """One call through the proxy to an upstream that answers ``reply``."""
    proxy = await proxy_to(emulator, start_proxy, await h11_upstream(lambda _: reply))
    client = await clients(proxy)
    await client.send(client_request)
    return await client.answer(client_request.split(b" ", 1)[0].decode()), client


# --------------------------------------------------------------------------- refused answers


def assert_bad_answer(answer: Answer) -> None:
    assert answer.status == 502
    assert answer.values(b"Content-Type") == [b"application/problem+json"]
    assert orjson.loads(answer.body)["status"] == 502


@pytest.fixture
def shared() -> dict[str, Any]:
    """One proxy and upstream for every example of a hypothesis test."""
    return {}


async def scripted_proxy(
    shared: dict[str, Any],
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    reply: bytes,
) -> RunningProxy:
    """The shared proxy, in front of an upstream that now answers ``reply``."""
    if not shared:
        shared["upstream"] = upstream = await h11_upstream(lambda _: shared["reply"])
        shared["proxy"] = await proxy_to(emulator, start_proxy, upstream)
    shared["reply"] = reply
    proxy: RunningProxy = shared["proxy"]
    return proxy


async def one_answer(proxy: RunningProxy) -> Answer:
    client = await Client.open(proxy)
    try:
        await client.send(request("GET", "/x"))
        return await client.answer()
    finally:
        await client.close()
