"""Who gets in: the client's socket address and, optionally, its client key.

Only the TCP peer address counts; ``X-Forwarded-For`` and friends are never trusted.
Client keys are compared in constant time against every configured key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from aiohttp import hdrs, web

from proxy.config import Network
from proxy.errors import Forbidden, ProxyAuthRequired
from proxy.secret import Secret


def peer_address(request: web.BaseRequest) -> str:
    """The client's IP address as the socket reports it ("" if unknown)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else ""


@lru_cache(maxsize=4096)
def is_allowed(networks: tuple[Network, ...], client: str) -> bool:
    """True if ``client`` (an address string) lies in one of ``networks``."""
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


def check_client(networks: tuple[Network, ...], client: str) -> None:
    """403 unless the socket's peer address is in ``allow_clients``."""
    if not is_allowed(networks, client):
        raise Forbidden(f"client address {client} is not allowed", reason="client_not_allowed")


def check_client_key(keys: Sequence[Secret], request: web.BaseRequest) -> None:
    """407 unless ``Proxy-Authorization: Bearer <key>`` names a configured client key."""
    if not keys:
        return
    scheme, _, given = request.headers.get(hdrs.PROXY_AUTHORIZATION, "").partition(" ")
    # Compare against every key, always, so timing says nothing about which one matched.
    matched = [key.matches(given.strip()) for key in keys]
    if scheme.lower() != "bearer" or not any(matched):
        raise ProxyAuthRequired("a valid Proxy-Authorization: Bearer <client key> is required")
