"""Refused peers are let go: they never keep a connection, a slot of ``max_connections``.

A peer that no path could serve is closed as it is accepted; a request refused for its
address (403) or its missing key (407) closes its connection after the answer; one
address holds at most ``max_connections_per_client`` connections. Every peer here is on
loopback: 127.0.0.1 is the refused address, 127.0.0.2 (a client binding its source
there) the allowed one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import h11
import pytest

from tests.conftest import ProxyFactory, RunningEmulator, RunningProxy, make_config
from tests.webhook_peers import webhooks_table

REFUSED, ALLOWED = "127.0.0.1", "127.0.0.2"
WAIT = 30.0  # the ceiling on any one wait here; on an idle machine each ends at once
FLOOD = 1024  # connections from the refused address: the default max_connections
CLIENT_KEY = "ck-" + "k" * 32
#: Far beyond WAIT: an idle connection closed by header_timeout would prove nothing.
IDLE = {"header_timeout": 600}

pytestmark = pytest.mark.timeout(300)


async def connect(proxy: RunningProxy, source: str) -> tuple[asyncio.StreamReader, Any]:
    return await asyncio.open_connection(*proxy.address, local_addr=(source, 0))


async def closed_by_the_proxy(reader: asyncio.StreamReader) -> bool:
    """True once the proxy has closed the connection (EOF or reset), within WAIT."""
    try:
        async with asyncio.timeout(WAIT):
            while await reader.read(1 << 16):
                pass
    except ConnectionResetError:
        pass
    return True


async def exchange(proxy: RunningProxy, source: str) -> tuple[int, bool]:
    """``GET /x`` on a new connection from ``source``: the answer's status (judged by
    h11) and whether the proxy then closed the connection."""
    reader, writer = await connect(proxy, source)
    try:
        client = h11.Connection(h11.CLIENT)
        writer.write(client.send(h11.Request(method="GET", target="/x", headers=[("Host", "x")])))
        writer.write(client.send(h11.EndOfMessage()))
        status = 0
        async with asyncio.timeout(WAIT):
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await reader.read(1 << 16))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        return status, await closed_by_the_proxy(reader)
    finally:
        writer.close()


async def served(proxy: RunningProxy, source: str) -> int:
    """The status of one call from ``source`` through aiohttp's client."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as client:
        async with asyncio.timeout(WAIT):
            async with client.get(proxy.at("/echo/ok")) as response:
                await response.read()
                return response.status


async def refused_at_accept(proxy: RunningProxy, source: str) -> bool:
    """True if a connection from ``source`` is closed without an answer to its request."""
    reader, writer = await connect(proxy, source)
    try:
        writer.write(b"GET /echo/ok HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            async with asyncio.timeout(WAIT):
                return await reader.read(1 << 16) == b""
        except ConnectionResetError:
            return True
    finally:
        writer.close()


async def test_a_flood_from_a_refused_address_leaves_the_allowed_client_served(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """1,024 connections from an address outside allow_clients (as many as
    max_connections) are each closed at accept, so the allowed client, calling while
    they are open, gets 200 every time."""
    server = {"allow_clients": [f"{ALLOWED}/32"], **IDLE}
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url, server=server))
    flood = [await connect(proxy, REFUSED) for _ in range(FLOOD)]
    try:
        for _, writer in flood[:8]:  # a few of them ask, the way the attack did
            writer.write(b"GET /echo/x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [await served(proxy, ALLOWED) for _ in range(5)] == [200] * 5
        closed = await asyncio.gather(*(closed_by_the_proxy(reader) for reader, _ in flood))
        assert all(closed)
    finally:
        for _, writer in flood:
            writer.close()
    assert proxy.logs.events("request_completed")[-1]["client"] == ALLOWED


async def with_hook(
    emulator: RunningEmulator, start_proxy: ProxyFactory, store: Path, hook: dict[str, Any]
) -> RunningProxy:
    """The proxy letting in only the allowed address, with one ``[[webhooks]]`` entry."""
    extra = {"webhooks": [hook], "store": {"path": str(store)}}
    server = {"allow_clients": [f"{ALLOWED}/32"], **IDLE}
    return await start_proxy(
        make_config(emulator.token_url, emulator.url, server=server, extra=extra)
    )


async def test_a_peer_let_in_only_by_an_ecom_callbacks_allow_from_is_not_closed_at_accept(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """An address outside allow_clients but in an ecom-callback's allow_from may call
    that path, so it is accepted; a call elsewhere gets 403, and then is let go."""
    hook: dict[str, Any] = {"path": "/callbacks", "kind": "ecom-callback"}
    hook |= {"deliver_to": f"{emulator.url}/app", "allow_from": [f"{REFUSED}/32"]}
    proxy = await with_hook(emulator, start_proxy, tmp_path / "events.sqlite3", hook)
    assert await exchange(proxy, REFUSED) == (403, True)


async def test_a_peer_outside_an_ecom_callbacks_allow_from_too_is_closed_at_accept(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """An ecom-callback lets in only its own allow_from (only a ``vipps-webhook`` path
    opens the door to anyone): an address outside both is closed as it is accepted."""
    hook: dict[str, Any] = {"path": "/callbacks", "kind": "ecom-callback"}
    hook |= {"deliver_to": f"{emulator.url}/app", "allow_from": ["127.0.0.3/32"]}
    proxy = await with_hook(emulator, start_proxy, tmp_path / "events.sqlite3", hook)
    assert await refused_at_accept(proxy, REFUSED)
    assert await served(proxy, ALLOWED) == 200


async def test_a_request_refused_for_its_address_closes_its_connection(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """With a vipps-webhook path (which any address may call) every peer is accepted;
    one outside allow_clients gets 403 on a proxied path, and its connection is closed."""
    hook = webhooks_table(f"{emulator.url}/app")
    proxy = await with_hook(emulator, start_proxy, tmp_path / "events.sqlite3", hook)
    assert await exchange(proxy, REFUSED) == (403, True)


async def test_a_request_without_a_client_key_closes_its_connection(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """407 for a missing client key, and the connection is closed after it."""
    server = {"client_keys": [CLIENT_KEY], **IDLE}
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url, server=server))
    assert await exchange(proxy, REFUSED) == (407, True)


async def test_one_address_holds_at_most_max_connections_per_client(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """With max_connections_per_client = 3, a fourth connection from one address is
    closed at accept while another address is still served; once one of the three
    ends, that address gets a connection again."""
    server = {"allow_clients": ["127.0.0.0/8"], "max_connections_per_client": 3}
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url, server=server))
    held = [await connect(proxy, REFUSED) for _ in range(3)]
    try:
        for reader, writer in held:  # each one served, and kept alive
            writer.write(b"GET /echo/held HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(WAIT):
                assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
        assert await refused_at_accept(proxy, REFUSED)
        assert await served(proxy, ALLOWED) == 200
        held.pop()[1].close()
        async with asyncio.timeout(WAIT):  # the slot frees once the proxy sees the close
            while await refused_at_accept(proxy, REFUSED):  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.05)
    finally:
        for _, writer in held:
            writer.close()
