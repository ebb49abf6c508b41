"""TLS contexts: outbound (upstreams and token endpoints) and inbound (clients)."""

from __future__ import annotations

import ssl

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
