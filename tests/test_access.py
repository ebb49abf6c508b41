"""Who gets in: the allow-list's edges and the client key's scheme.

The allow-list is judged on the socket's peer address as the OS reports it; the forms
loopback cannot produce (an IPv4-mapped IPv6 peer, a zone id, a peer that is no IP
address) are given to ``Allowlist`` directly. Spoofed forwarded headers and wrong keys
are in test_security.py.
"""

from __future__ import annotations

import ipaddress

import aiohttp
import pytest

from proxy.access import MAX_ADDRESSES_KNOWN, Allowlist
from proxy.config import Network
from proxy.errors import Forbidden
from tests.conftest import ProxyFactory, RunningEmulator, make_config


def allowlist(*networks: str) -> Allowlist:
    nets: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in networks)
    return Allowlist(nets)


@pytest.mark.parametrize("peer", ["10.1.2.0", "10.1.2.255", "::ffff:10.1.2.7", "2001:db8::1"])
def test_an_address_inside_an_allowed_network_passes(peer: str) -> None:
    """Both ends of a network, an IPv4-mapped IPv6 peer judged as its IPv4 address
    (a dual-stack socket reports IPv4 clients so), and IPv6 networks."""
    allowlist("10.1.2.0/24", "2001:db8::/32").check(peer)


@pytest.mark.parametrize(
    "peer", ["10.1.1.255", "10.1.3.0", "::ffff:10.1.3.0", "2001:db9::1", "", "unix", "10.1.2"]
)
def test_an_address_outside_every_allowed_network_gets_403(peer: str) -> None:
    """Just outside either end, mapped or not; a peer that is no IP address (a Unix
    socket, an unknown peer) is refused, never let through."""
    with pytest.raises(Forbidden) as refused:
        allowlist("10.1.2.0/24", "2001:db8::/32").check(peer)
    assert refused.value.reason == "client_not_allowed"


def test_a_zone_id_does_not_change_the_answer() -> None:
    """``fe80::1%eth0`` is ``fe80::1``: the zone names the interface, not the client."""
    allowed = allowlist("fe80::/64")
    allowed.check("fe80::1%eth0")
    with pytest.raises(Forbidden):
        allowlist("10.0.0.0/8").check("fe80::1%eth0")


def test_an_answer_remembered_is_the_same_answer() -> None:
    """The second call from an address gets what the first got, both ways."""
    allowed = allowlist("127.0.0.0/8")
    for _ in range(2):
        allowed.check("127.0.0.5")
        with pytest.raises(Forbidden):
            allowed.check("192.0.2.1")


def test_a_scan_of_addresses_cannot_grow_the_remembered_answers() -> None:
    """At most ``MAX_ADDRESSES_KNOWN`` answers are kept; later addresses are still
    judged, and correctly, without being remembered."""
    allowed = allowlist("10.0.0.0/8")
    for n in range(MAX_ADDRESSES_KNOWN + 50):
        allowed.check(str(ipaddress.ip_address("10.0.0.0") + n))
    assert len(allowed._known) == MAX_ADDRESSES_KNOWN
    with pytest.raises(Forbidden):
        allowed.check("192.0.2.1")


KEY = "ck-" + "k" * 32
OTHER_KEY = "ck-" + "o" * 32


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_the_bearer_scheme_of_a_client_key_is_read_in_any_case(
    scheme: str, emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """RFC 9110 auth schemes are case-insensitive; every configured key is accepted."""
    config = make_config(emulator.token_url, emulator.url, server={"client_keys": [KEY, OTHER_KEY]})
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession() as client:
        for key in (KEY, OTHER_KEY):
            headers = {"Proxy-Authorization": f"{scheme} {key}"}
            async with client.get(proxy.at("/echo/k"), headers=headers) as response:
                assert response.status == 200, await response.text()
        headers = {"Proxy-Authorization": f"{scheme}x {KEY}"}
        async with client.get(proxy.at("/echo/k"), headers=headers) as response:
            assert response.status == 407
