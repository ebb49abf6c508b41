"""Name look-ups for upstream connections: one at a time per name, answers kept briefly.

Without it, every new upstream connection asked the system resolver (a thread each), so a
burst of cold calls to one host made one look-up per call. As aiohttp's connector does
(its resolver cache, ``ttl_dns_cache`` 10 s): concurrent look-ups of a name share one,
and its answer serves new connections for ``ttl`` seconds. A failed look-up is not kept.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Final

TTL: Final = 10.0  # seconds an answer is used for, as aiohttp's default ttl_dns_cache

AddrInfo = tuple[Any, ...]  # what loop.getaddrinfo gives: family, type, proto, name, address
Name = tuple[str, int]


class Resolver:
    """Addresses of a host and port for TCP, asked of the system (``getaddrinfo``) at
    most once per ``ttl`` and never twice at the same time."""

    def __init__(self, ttl: float = TTL) -> None:
        self.ttl = ttl
        self._answers: dict[Name, tuple[float, list[AddrInfo]]] = {}
        self._pending: dict[Name, asyncio.Task[list[AddrInfo]]] = {}

    async def resolve(self, host: str, port: int) -> list[AddrInfo]:
        """The addresses, from a fresh enough answer, a look-up under way, or a new one.

        A caller that is cancelled leaves the shared look-up running for the others.
        """
        name = (host, port)
        kept = self._answers.get(name)
        if kept is not None and kept[0] > time.monotonic():
            return kept[1]
        task = self._pending.get(name)
        if task is None:
            task = asyncio.create_task(self._look_up(name))
            self._pending[name] = task
            task.add_done_callback(lambda done: self._settle(name, done))
        return await asyncio.shield(task)

    async def _look_up(self, name: Name) -> list[AddrInfo]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(*name, type=socket.SOCK_STREAM)
        self._answers[name] = (time.monotonic() + self.ttl, infos)
        return infos

    def _settle(self, name: Name, task: asyncio.Task[list[AddrInfo]]) -> None:
        del self._pending[name]
        if not task.cancelled():
            task.exception()  # marked retrieved: its callers (if any are left) had it
