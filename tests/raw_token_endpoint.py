"""A raw token endpoint: a loopback socket server whose answer bytes, and their timing on
the wire, are the test's.

``RawTokenEndpoint`` answers every request with one answer (``http_answer`` frames a
body with a Content-Length or chunked) written by a ``Writer``: all at once, byte by
byte, or in two pieces. ``start_token_endpoint`` starts one; the ``token_endpoint``
fixture starts them and stops them after the test (test modules take it by name:
``token_endpoint = raw_token_endpoint.token_endpoint``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from yarl import URL

from tests.loopback import LoopbackServers

Writer = Callable[[asyncio.StreamWriter, bytes], Awaitable[None]]


def http_answer(body: bytes, *, chunked: bool = False, status: int = 200) -> bytes:
    """A whole HTTP/1.1 answer: ``body`` with a Content-Length, or in 16-byte chunks."""
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nConnection: close\r\n"
    if not chunked:
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    chunks = [body[i : i + 16] for i in range(0, len(body), 16)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + framed + b"0\r\n\r\n"


async def all_at_once(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def byte_by_byte(writer: asyncio.StreamWriter, data: bytes) -> None:
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(0.001)


async def in_two_pieces(writer: asyncio.StreamWriter, data: bytes) -> None:
    """The head and half the body, then 0.2 s later the rest (a gateway, TLS records)."""
    cut = data.index(b"\r\n\r\n") + 4 + (len(data) - data.index(b"\r\n\r\n")) // 2
    writer.write(data[:cut])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(data[cut:])
    await writer.drain()


class RawTokenEndpoint:
    """A loopback token endpoint that answers every request with ``answer`` via ``write``."""

    def __init__(self, answer: bytes, write: Writer = all_at_once) -> None:
        self.answer = answer
        self.write = write
        self.requests = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> URL:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return URL(f"http://127.0.0.1:{port}/accesstoken/get")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            await self.write(writer, self.answer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def start_token_endpoint(answer: bytes, write: Writer = all_at_once) -> RawTokenEndpoint:
    """A raw token endpoint listening on 127.0.0.1; its ``server`` is the caller's to close."""
    endpoint = RawTokenEndpoint(answer, write)
    endpoint.server = await asyncio.start_server(endpoint._serve, "127.0.0.1", 0)
    return endpoint


@pytest.fixture
def token_endpoint(loopback_servers: LoopbackServers) -> Callable[..., Awaitable[RawTokenEndpoint]]:
    """Starts raw token endpoints; stops them after the test."""

    async def factory(answer: bytes, write: Writer = all_at_once) -> RawTokenEndpoint:
        endpoint = RawTokenEndpoint(answer, write)
        endpoint.server = await loopback_servers.start(endpoint._serve)
        return endpoint

    return factory


EndpointFactory = Callable[..., Awaitable[RawTokenEndpoint]]
