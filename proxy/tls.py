"""TLS contexts: outbound (upstreams and token endpoints) and inbound (clients)."""

from __future__ import annotations

import asyncio
import ssl

from aiohttp import web

from proxy.config import ServerConfig, TLSConfig
from proxy.startup import load_file


def outbound_context(tls: TLSConfig) -> ssl.SSLContext:
    """Verified by default; extra CAs and a client certificate when configured."""
    context = ssl.create_default_context()
    if tls.ca_bundle:
        load_file(
            "tls.ca_bundle", tls.ca_bundle, lambda: context.load_verify_locations(tls.ca_bundle)
        )
    if tls.client_cert:
        load_file(
            "tls.client_cert",
            _pair(tls.client_cert, tls.client_key),
            lambda: context.load_cert_chain(tls.client_cert, tls.client_key or None),
        )
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def inbound_context(server: ServerConfig) -> ssl.SSLContext | None:
    """The server's context when ``tls_cert`` is set; client certificates if ``client_ca``."""
    if not server.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_file(
        "server.tls_cert",
        _pair(server.tls_cert, server.tls_key),
        lambda: context.load_cert_chain(server.tls_cert, server.tls_key),
    )
    if server.client_ca:
        load_file(
            "server.client_ca",
            server.client_ca,
            lambda: context.load_verify_locations(cafile=server.client_ca),
        )
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _pair(cert: str, key: str) -> str:
    return f"{cert} (key {key})" if key and key != cert else cert


class HandshakeBoundSite(web.TCPSite):
    """aiohttp's TCP site whose TLS handshakes last at most ``handshake_timeout`` seconds.

    A client connection is counted (``max_connections``) and timed (``header_timeout``)
    only once its handshake is done; asyncio's own bound on a handshake is 60 s, so a
    client that never sends its ClientHello would hold a socket that long, uncounted.
    """

    def __init__(self, *args: object, handshake_timeout: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        if self._ssl_context is None:
            await super().start()
            return
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._handshake_timeout,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
