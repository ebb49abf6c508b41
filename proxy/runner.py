"""``ProxyRunner``: a ``ProxyApp`` served on aiohttp's low-level server, with its start,
drain and close, and the client connections it holds: refused requests answered the
proxy's way, connections counted and bounded per client, a client that stops reading
cut. The aiohttp hooks it takes come from ``proxy.aiohttp_seam``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from proxy.aiohttp_seam import (
    ClientConnectionHandler,
    ClientConnectionServer,
    HookedServerRunner,
    HttpProcessingError,
)
from proxy.app import ProxyApp
from proxy.reload import Reloader


class ProxyRunner(HookedServerRunner):
    """aiohttp's runner for the low-level server, with the proxy's start, drain and close.

    It owns the app's ``Reloader`` (``proxy.reload``), started and stopped with it.
    ``cleanup()`` stops listening, marks the proxy draining (calls cut after this are
    logged ``cut_at_shutdown``), gives in-flight calls ``shutdown_timeout`` seconds and
    then closes the proxy's connections, as an application runner would.
    """

    def __init__(self, proxy: ProxyApp, *, shutdown_timeout: float, **handler: Any) -> None:
        server = _ProxyServer(proxy, handler_cancellation=True, **handler)
        super().__init__(server, shutdown_timeout=shutdown_timeout)
        self.proxy = proxy
        self.reloader = Reloader(proxy)
        #: The admin listener (``server.admin_port``), closed with this runner.
        self.admin: web.BaseRunner | None = None

    async def before_serving(self) -> None:
        await self.proxy.start()
        self.reloader.start()

    async def shutdown(self) -> None:
        self.proxy.draining = True

    async def after_serving(self) -> None:
        if self.admin is not None:
            await self.admin.cleanup()
        await self.reloader.close()
        await self.proxy.close()


class _ConnectionHandler(ClientConnectionHandler):
    """One client connection; a request its parser refused goes to ``ProxyApp.refused``.

    Once more than the transport's buffer waits for the client (writing paused), the
    client has ``body_timeout`` seconds to take enough of it; else it is cut. A client
    that never reads (small answers pipelined, a large one left) held its connection,
    a slot of ``max_connections``, for good. No timer runs while writes flow.
    """

    def __init__(self, manager: _ProxyServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._refused = manager.proxy.refused
        self._write_timeout = manager.proxy.state.config.server.body_timeout
        self._stalled: asyncio.TimerHandle | None = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.call_later(self._write_timeout, self._cut)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        super().connection_lost(exc)

    def _cut(self) -> None:
        self._stalled = None
        if self.transport is not None:
            self.transport.abort()

    def parser_refused(
        self, request: web.BaseRequest, exc: HttpProcessingError
    ) -> web.StreamResponse:
        return self._refused(request, exc)


class _ProxyServer(ClientConnectionServer):
    """aiohttp's low-level server, whose connections answer refused requests the proxy's
    way (``ProxyApp.refused``) instead of aiohttp's text/plain 400 and ERROR traceback,
    and which holds at most ``max_connections`` client connections (the current
    config's), and at most ``max_connections_per_client`` from one address: one more is
    closed the moment it is accepted, before a byte is read. So is a peer that no path
    could serve (``ProxyState.admission``)."""

    handler_class = _ConnectionHandler

    def __init__(self, proxy: ProxyApp, **kwargs: Any) -> None:
        super().__init__(proxy.handle, **kwargs)
        self.proxy = proxy
        self._clients: dict[ClientConnectionHandler, str] = {}  # each connection's peer
        self._per_client: dict[str, int] = {}  # connections held, per peer address

    def admit(self, handler: ClientConnectionHandler, transport: asyncio.Transport) -> bool:
        state = self.proxy.state
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if peer else ""
        held = self._per_client.get(client, 0)
        if (
            self.connection_count >= state.config.server.max_connections
            or held >= state.config.server.max_connections_per_client
            or (state.admission is not None and not state.admission.admits(client))
        ):
            return False
        self._per_client[client] = held + 1
        self._clients[handler] = client
        return True

    def forget(self, handler: ClientConnectionHandler) -> None:
        client = self._clients.pop(handler, None)
        if client is not None:
            held = self._per_client.pop(client) - 1
            if held:
                self._per_client[client] = held
