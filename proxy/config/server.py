"""``[server]``: the listener, who may connect (addresses, client keys, client
certificates), limits and time-outs, the admin listener; and the rule that refuses to
expose our credentials to public addresses by accident.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from proxy.config.values import ConfigError, Network, Table, check_type, integer, networks
from proxy.secret import Secret

LOOPBACK: Final[tuple[Network, ...]] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)

#: Addresses that are not public: private (RFC 1918), loopback, link-local, and IPv6
#: unique-local. No two of them touch, so a network inside their union is inside one.
NOT_PUBLIC: Final[tuple[Network, ...]] = (
    *LOOPBACK,
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fc00::/7"),
)
MIN_CLIENT_KEY: Final = 16  # characters; a shorter shared key can be guessed


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    allow_clients: tuple[Network, ...] = LOOPBACK
    shutdown_timeout: float = 25.0
    client_keys: tuple[Secret, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""
    max_body_bytes: int = 0
    allow_open_network: bool = False
    header_timeout: float = 20.0
    body_timeout: float = 20.0
    max_connections: int = 1024
    reload_interval: float = 10.0
    admin_port: int = 0
    admin_host: str = "127.0.0.1"
    max_connections_per_client: int = 256


def parse_server(t: Table) -> ServerConfig:
    t.allow_only(*ServerConfig.__dataclass_fields__)
    keys = tuple(
        _client_key(k, f"{t.key}.client_keys[{i}]")
        for i, k in enumerate(t.get("client_keys", list, []))
    )
    server = ServerConfig(
        host=t.get("host", str, "127.0.0.1"),
        port=integer(t, "port", 8080, 0, 65535),
        workers=integer(t, "workers", 1, 1, 64),
        allow_clients=networks(t, "allow_clients", ["127.0.0.0/8", "::1/128"]),
        shutdown_timeout=t.number("shutdown_timeout", 25.0),
        client_keys=keys,
        tls_cert=t.get("tls_cert", str, ""),
        tls_key=t.get("tls_key", str, ""),
        client_ca=t.get("client_ca", str, ""),
        max_body_bytes=integer(t, "max_body_bytes", 0, 0, 2**62),
        allow_open_network=t.get("allow_open_network", bool, False),
        header_timeout=t.number("header_timeout", 20.0, minimum=0.1),
        body_timeout=t.number("body_timeout", 20.0, minimum=0.1),
        max_connections=integer(t, "max_connections", 1024, 1, 1_000_000),
        reload_interval=t.number("reload_interval", 10.0),
        admin_port=integer(t, "admin_port", 0, 0, 65535),
        admin_host=t.get("admin_host", str, "127.0.0.1"),
        max_connections_per_client=integer(t, "max_connections_per_client", 256, 1, 1_000_000),
    )
    _check_server_tls(server, t.key)
    check_exposure(server, t.key)
    if server.admin_port and server.admin_port == server.port:
        raise ConfigError(f"{t.key}.admin_port", f"must differ from port, got {server.port}")
    return server


def _client_key(value: Any, key: str) -> Secret:
    """A client key: a string of at least MIN_CLIENT_KEY characters (``${KEY:-}`` with
    KEY unset is empty, and must not count as a guard)."""
    text = check_type(value, str, key)
    if not text.strip():
        raise ConfigError(key, "is empty")
    if len(text) < MIN_CLIENT_KEY:
        raise ConfigError(key, f"must be at least {MIN_CLIENT_KEY} characters")
    return Secret(text)


def _check_server_tls(server: ServerConfig, key: str) -> None:
    if bool(server.tls_cert) != bool(server.tls_key):
        raise ConfigError(f"{key}.tls_key", "tls_cert and tls_key go together")
    if server.client_ca and not server.tls_cert:
        raise ConfigError(f"{key}.client_ca", "needs tls_cert and tls_key")
    for name in ("tls_cert", "tls_key", "client_ca"):
        path = getattr(server, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"{key}.{name}", f"file not found: {path}")


def check_exposure(server: ServerConfig, key: str) -> None:
    """Refuse to hand our credentials to the internet by accident: a listener beyond
    loopback, unguarded, may let in private, loopback and link-local addresses only."""
    if is_loopback_host(server.host) or server.allow_open_network:
        return
    if server.client_keys or server.client_ca:
        return
    for i, net in enumerate(server.allow_clients):
        if covers_public(net):
            raise ConfigError(
                f"{key}.allow_clients[{i}]",
                f"{net} lets in public addresses while listening beyond loopback without "
                "client_keys or client_ca; narrow allow_clients to private networks, add "
                "either, or set allow_open_network = true",
            )


def covers_public(net: Network) -> bool:
    """True if ``net`` holds any address that is not private, loopback, link-local or
    unique-local."""
    return not any(
        net.version == other.version and net.subnet_of(other)  # type: ignore[arg-type]
        for other in NOT_PUBLIC
    )


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
