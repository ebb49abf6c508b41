"""Who gets in: the client's socket address and, optionally, its client key.

Only the TCP peer address counts; ``X-Forwarded-For`` and friends are never trusted.
Client keys are compared in constant time against every configured key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

from aiohttp import hdrs, web

from proxy.config import Network, Webhook
from proxy.errors import Forbidden, ProxyAuthRequired
from proxy.secret import Secret


def peer_address(request: web.BaseRequest) -> str:
    """The client's IP address as the socket reports it ("" if unknown)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return str(peer[0]) if peer else ""


#: The reason of a 403 for an address outside ``allow_clients``.
CLIENT_NOT_ALLOWED: Final = "client_not_allowed"
MAX_ADDRESSES_KNOWN = 4096  # answers remembered, so a scan of addresses cannot grow memory


class Allowlist:
    """``allow_clients``: which socket peer addresses may call. Each address's answer is
    remembered: parsing it and testing every network on every call costs more than
    the rest of the checks together."""

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self._networks = networks
        self._known: dict[str, bool] = {}

    def check(self, client: str) -> None:
        """403 unless the socket's peer address is in ``allow_clients``."""
        if not self.admits(client):
            raise Forbidden(f"client address {client} is not allowed", reason=CLIENT_NOT_ALLOWED)

    def admits(self, client: str) -> bool:
        """True if ``client``, a socket's peer address, is in the networks."""
        allowed = self._known.get(client)
        if allowed is None:
            allowed = _in_networks(self._networks, client)
            if len(self._known) < MAX_ADDRESSES_KNOWN:
                self._known[client] = allowed
        return allowed


def admission(allow_clients: tuple[Network, ...], hooks: Iterable[Webhook]) -> Allowlist | None:
    """Who may hold a connection at all: ``allow_clients`` and every eCom callback's
    ``allow_from``; None (anyone) when a ``vipps-webhook`` path takes calls from anywhere.
    A peer outside it could be served no path, so it is closed as it is accepted."""
    networks = list(allow_clients)
    for hook in hooks:
        if hook.kind == "vipps-webhook":
            return None
        networks += hook.allow_from
    return Allowlist(tuple(networks))


def _in_networks(networks: tuple[Network, ...], client: str) -> bool:
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


def check_client_key(keys: Sequence[Secret], request: web.BaseRequest) -> None:
    """407 unless ``Proxy-Authorization: Bearer <key>`` names a configured client key."""
    if not keys:
        return
    scheme, _, given = request.headers.get(hdrs.PROXY_AUTHORIZATION, "").partition(" ")
    # Compare against every key, always, so timing says nothing about which one matched.
    matched = [key.matches(given.strip()) for key in keys]
    if scheme.lower() != "bearer" or not any(matched):
        raise ProxyAuthRequired("a valid Proxy-Authorization: Bearer <client key> is required")
