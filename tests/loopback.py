"""``loopback_servers``: raw asyncio socket servers a test starts on 127.0.0.1, every
one closed after the test (the token endpoints and upstreams that write exact bytes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class LoopbackServers:
    """The servers one test started; ``close`` stops them all."""

    def __init__(self) -> None:
        self._servers: list[asyncio.Server] = []

    async def start(self, serve: Serve) -> asyncio.Server:
        """A server on 127.0.0.1 and a free port, each connection handed to ``serve``."""
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self._servers.append(server)
        return server

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()


@pytest.fixture
async def loopback_servers() -> AsyncIterator[LoopbackServers]:
    servers = LoopbackServers()
    yield servers
    await servers.close()
