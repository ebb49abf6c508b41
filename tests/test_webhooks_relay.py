"""The relay over real sockets: Vipps (a signing client) -> the proxy -> a real aiohttp
app standing in for the legacy app."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.runner import ProxyRunner
from tests.conftest import (
    ProxyFactory,
    RunningEmulator,
    RunningProxy,
    free_port,
    make_config,
)
from tests.webhook_peers import (
    ECOM,
    HOOK,
    LegacyApp,
    eventually,
    payment_event,
    stored,
    vipps_headers,
    webhooks_table,
)


@dataclass
class Relay:
    proxy: RunningProxy
    app: LegacyApp
    store: Path
    app_port: int

    @property
    def host(self) -> str:
        host, port = self.proxy.address
        return f"{host}:{port}"

    async def send(
        self, body: bytes, path: str = HOOK, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        signed = {**vipps_headers(body, self.host, path), **headers}
        async with (
            aiohttp.ClientSession() as client,
            client.post(self.proxy.at(path), data=body, headers=signed) as response,
        ):
            return response.status, dict(response.headers), await response.read()


async def start_app(aiohttp_server: Any, app: LegacyApp, port: int = 0) -> TestServer:
    server: TestServer = await aiohttp_server(app.app(), host="127.0.0.1", port=port)
    return server


async def start_relay(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    tmp_path: Path,
    app_port: int,
    *,
    server: dict[str, Any] | None = None,
    hooks: list[dict[str, Any]] | None = None,
) -> Relay:
    deliver_to = f"http://127.0.0.1:{app_port}/vipps/events"
    store = tmp_path / "events.sqlite3"
    config = make_config(
        emulator.token_url,
        emulator.url,
        server=server,
        extra={
            "webhooks": hooks or [webhooks_table(deliver_to)],
            "store": {"path": str(store)},
        },
    )
    return Relay(await start_proxy(config), LegacyApp(), store, app_port)


@pytest.fixture
async def relay(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> Relay:
    """The proxy relaying HOOK to a running legacy app."""
    port = free_port()
    relay = await start_relay(emulator, start_proxy, tmp_path, port)
    await start_app(aiohttp_server, relay.app, port)
    return relay


async def test_a_signed_event_reaches_the_app_unchanged(relay: Relay) -> None:
    """Same method, body byte for byte, Vipps' headers, plus event id and attempt."""
    body = payment_event("order-1")
    status, headers, _ = await relay.send(body, **{"X-Vipps-Extra": "kept"})
    assert status == 200
    await eventually(lambda: len(relay.app.received) == 1, "delivery")
    got = relay.app.received[0]
    assert (got.method, got.path_qs, got.body) == ("POST", "/vipps/events", body)
    assert got.header("X-Vipps-Extra") == "kept"
    assert got.header("Content-Type") == "application/json"
    assert (
        got.header("x-ms-content-sha256") == vipps_headers(body, "h", HOOK)["x-ms-content-sha256"]
    )
    assert got.header("Vipps-Proxy-Event-Id") == headers["Vipps-Proxy-Event-Id"]
    assert got.header("Vipps-Proxy-Attempt") == "1"
    await eventually(lambda: stored(relay.store, "delivered") != [], "delivered state")


async def test_an_altered_body_gets_401_and_is_neither_stored_nor_delivered(relay: Relay) -> None:
    body = payment_event("order-1")
    signed = vipps_headers(body, relay.host, HOOK)
    async with (
        aiohttp.ClientSession() as client,
        client.post(relay.proxy.at(HOOK), data=body + b" ", headers=signed) as response,
    ):
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        problem = orjson.loads(await response.read())
    assert problem["status"] == 401
    assert stored(relay.store) == []
    assert relay.app.received == []
    (line,) = relay.proxy.logs.events("webhook_received")
    assert line["result"] == "hash_mismatch"


async def test_an_unsigned_event_gets_401(relay: Relay) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.post(relay.proxy.at(HOOK), data=b"{}") as response,
    ):
        assert response.status == 401
    assert stored(relay.store) == []


async def test_a_body_over_64_kib_gets_413_and_is_not_stored(relay: Relay) -> None:
    body = b"{" + b" " * (64 * 1024) + b"}"
    status, _, _ = await relay.send(body)
    assert status == 413
    assert stored(relay.store) == []


async def test_a_duplicate_from_vipps_is_acknowledged_and_delivered_once(relay: Relay) -> None:
    body = payment_event("order-dup")
    first = await relay.send(body)
    second = await relay.send(body)
    assert first[0] == second[0] == 200
    assert first[1]["Vipps-Proxy-Event-Id"] == second[1]["Vipps-Proxy-Event-Id"]
    await eventually(lambda: stored(relay.store, "delivered") != [], "delivery")
    assert relay.app.bodies() == [body]
    assert [line["result"] for line in relay.proxy.logs.events("webhook_received")] == [
        "accepted",
        "duplicate",
    ]


async def test_an_app_that_is_down_gets_the_event_once_it_is_up(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    port = free_port()
    relay = await start_relay(emulator, start_proxy, tmp_path, port)
    body = payment_event("order-late")
    assert (await relay.send(body))[0] == 200
    await eventually(
        lambda: relay.proxy.logs.events("webhook_retry") != [], "a failed first attempt"
    )
    await start_app(aiohttp_server, relay.app, port)
    await eventually(lambda: stored(relay.store, "delivered") != [], "delivery")
    assert relay.app.bodies() == [body]
    assert int(relay.app.received[0].header("Vipps-Proxy-Attempt")) >= 2
    (retry, *_) = relay.proxy.logs.events("webhook_retry")
    assert (retry["error"], retry["result"]) == ("connect_failed", "retry")


async def test_events_of_one_reference_arrive_in_order(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """Sent while the app is down, delivered in the order they came once it is up."""
    port = free_port()
    relay = await start_relay(emulator, start_proxy, tmp_path, port)
    bodies = [payment_event("order-7", name, n) for n, name in enumerate(
        ["CREATED", "AUTHORIZED", "CAPTURED", "REFUNDED"]
    )]  # fmt: skip
    for body in bodies:
        assert (await relay.send(body))[0] == 200
    await start_app(aiohttp_server, relay.app, port)
    await eventually(lambda: len(stored(relay.store, "delivered")) == 4, "all four delivered")
    assert relay.app.bodies() == bodies


async def test_a_later_event_waits_while_an_earlier_one_of_its_reference_is_retried(
    relay: Relay,
) -> None:
    """The app refuses the payment's events for a while: nothing of that payment after
    the first is even tried until the first is delivered."""
    relay.app.failing.add("order-8")
    bodies = [payment_event("order-8", name, n) for n, name in enumerate(
        ["CREATED", "AUTHORIZED", "CAPTURED"]
    )]  # fmt: skip
    for body in bodies:
        assert (await relay.send(body))[0] == 200
    await eventually(lambda: relay.app.bodies().count(bodies[0]) >= 2, "the first retried")
    relay.app.failing.clear()
    await eventually(lambda: len(stored(relay.store, "delivered")) == 3, "all delivered")
    seen = relay.app.bodies()
    first_delivered = len(seen) - 1 - seen[::-1].index(bodies[0])
    assert seen[first_delivered:] == bodies
    assert set(seen[:first_delivered]) == {bodies[0]}


async def test_a_stuck_reference_does_not_hold_back_another(relay: Relay) -> None:
    relay.app.failing.add("stuck")
    stuck_1, stuck_2 = payment_event("stuck", "CREATED"), payment_event("stuck", "AUTHORIZED")
    other = payment_event("free", "CREATED")
    for body in (stuck_1, stuck_2, other):
        assert (await relay.send(body))[0] == 200
    await eventually(lambda: other in relay.app.bodies(), "the other reference delivered")
    await eventually(lambda: relay.app.bodies().count(stuck_1) >= 2, "the stuck one retried")
    assert stuck_2 not in relay.app.bodies()  # it waits behind the stuck one
    relay.app.failing.clear()
    await eventually(lambda: len(stored(relay.store, "delivered")) == 3, "all delivered")
    bodies = relay.app.bodies()
    assert bodies.index(stuck_2) > max(i for i, b in enumerate(bodies) if b == stuck_1)


async def test_webhook_paths_skip_allow_clients_but_callbacks_obey_it(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """A signed webhook is let in from anywhere; an eCom callback and ordinary calls are
    not, from an address outside allow_clients."""
    port = free_port()
    hooks = [
        webhooks_table(f"http://127.0.0.1:{port}/vipps/events"),
        {"path": ECOM, "kind": "ecom-callback", "deliver_to": f"http://127.0.0.1:{port}/cb"},
    ]
    relay = await start_relay(
        emulator, start_proxy, tmp_path, port, server={"allow_clients": ["10.0.0.0/8"]}, hooks=hooks
    )
    await start_app(aiohttp_server, relay.app, port)
    assert (await relay.send(payment_event("order-1")))[0] == 200
    async with aiohttp.ClientSession() as client:
        async with client.post(relay.proxy.at(ECOM + "/v2/payments/o-1"), data=b"{}") as response:
            assert response.status == 403
        async with client.get(relay.proxy.at("/epayment/v1/payments/x")) as response:
            assert response.status == 403


async def test_allow_from_lets_an_ecom_callback_in(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    port = free_port()
    hooks = [
        {
            "path": ECOM,
            "kind": "ecom-callback",
            "deliver_to": f"http://127.0.0.1:{port}/cb",
            "allow_from": ["127.0.0.0/8"],
        }
    ]
    relay = await start_relay(
        emulator, start_proxy, tmp_path, port, server={"allow_clients": ["10.0.0.0/8"]}, hooks=hooks
    )
    await start_app(aiohttp_server, relay.app, port)
    body = b'{"orderId":"o-9","transactionInfo":{"status":"RESERVED"}}'
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            relay.proxy.at(ECOM + "/v2/payments/o-9?x=1"),
            data=body,
            headers={"Authorization": "app-auth-token", "Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 200
    await eventually(lambda: len(relay.app.received) == 1, "delivery")
    got = relay.app.received[0]
    assert (got.path_qs, got.body, got.header("Authorization")) == (
        "/cb/v2/payments/o-9?x=1",
        body,
        "app-auth-token",
    )
    (event,) = stored(relay.store)
    assert event.ordering_key == "o-9"


async def test_ecom_shipping_details_are_proxied_at_once_and_never_stored(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    port = free_port()
    hooks = [{"path": ECOM, "kind": "ecom-callback", "deliver_to": f"http://127.0.0.1:{port}/cb"}]
    relay = await start_relay(emulator, start_proxy, tmp_path, port, hooks=hooks)
    relay.app.answer = {"orderId": "o-5", "shippingDetails": [{"shippingCost": 0}]}
    await start_app(aiohttp_server, relay.app, port)
    path = ECOM + "/v2/payments/o-5/shippingDetails"
    async with (
        aiohttp.ClientSession() as client,
        client.post(relay.proxy.at(path), json={"addressId": 1}) as response,
    ):
        assert response.status == 200
        assert await response.json() == relay.app.answer
    assert relay.app.received[0].path_qs == "/cb/v2/payments/o-5/shippingDetails"
    assert stored(relay.store) == []


async def test_a_callback_query_cannot_shadow_the_app_key_in_deliver_to(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """An unsigned sender adds ``?app_key=evil&x=1``: the app gets deliver_to's key
    first and only, then the sender's other parameters."""
    port = free_port()
    deliver_to = f"http://127.0.0.1:{port}/cb?app_key=k-1"
    hooks = [{"path": ECOM, "kind": "ecom-callback", "deliver_to": deliver_to}]
    relay = await start_relay(emulator, start_proxy, tmp_path, port, hooks=hooks)
    relay.app.answer = {"orderId": "o-5"}
    await start_app(aiohttp_server, relay.app, port)
    path = ECOM + "/v2/payments/o-5/shippingDetails?app_key=evil&x=1"
    async with (
        aiohttp.ClientSession() as client,
        client.post(URL(relay.proxy.at(path), encoded=True), json={}) as response,
    ):
        assert response.status == 200
    assert relay.app.received[0].path_qs == "/cb/v2/payments/o-5/shippingDetails?app_key=k-1&x=1"


async def raw_post(address: tuple[str, int], target: str) -> bytes:
    """``POST target`` with body ``{}`` sent as written (no client tidies the target),
    and the whole answer."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        % target.encode()
    )
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def test_a_webhook_target_with_a_fragment_gets_400_and_is_never_stored(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """``...?app_key=evil#``: what follows ``#`` would be cut from the delivery (the
    configured app key with it), so the target is refused as the router refuses it."""
    port = free_port()
    deliver_to = f"http://127.0.0.1:{port}/cb?app_key=k-1"
    hooks = [{"path": ECOM, "kind": "ecom-callback", "deliver_to": deliver_to}]
    relay = await start_relay(emulator, start_proxy, tmp_path, port, hooks=hooks)
    await start_app(aiohttp_server, relay.app, port)
    answer = await raw_post(relay.proxy.address, ECOM + "/v2/payments/o-1?app_key=evil#")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert stored(relay.store) == []
    assert relay.app.received == []


async def test_ecom_synchronous_path_to_an_app_that_is_down_gets_502(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    port = free_port()
    hooks = [{"path": ECOM, "kind": "ecom-callback", "deliver_to": f"http://127.0.0.1:{port}/cb"}]
    relay = await start_relay(emulator, start_proxy, tmp_path, port, hooks=hooks)
    async with (
        aiohttp.ClientSession() as client,
        client.delete(relay.proxy.at(ECOM + "/v2/consents/user-1")) as response,
    ):
        assert response.status == 502
    assert stored(relay.store) == []


async def test_metrics_count_received_and_delivered_and_show_pending(relay: Relay) -> None:
    assert (await relay.send(payment_event("order-m")))[0] == 200
    await eventually(lambda: stored(relay.store, "delivered") != [], "delivery")
    async with (
        aiohttp.ClientSession() as client,
        client.get(relay.proxy.at("/-/metrics")) as response,
    ):
        text = await response.text()
    assert f'vipps_proxy_webhooks_received_total{{path="{HOOK}",result="accepted"}} 1.0' in text
    assert f'vipps_proxy_webhooks_delivered_total{{path="{HOOK}",result="delivered"}} 1.0' in text
    assert f'vipps_proxy_webhooks_pending{{path="{HOOK}"}}' in text
    assert f'vipps_proxy_webhooks_oldest_pending_seconds{{path="{HOOK}"}}' in text


async def test_the_webhook_secret_never_appears_in_the_logs(relay: Relay) -> None:
    from tests.webhook_peers import SECRET

    await relay.send(payment_event("order-s"))
    await relay.send(b"{}", Authorization=SECRET)
    await eventually(lambda: stored(relay.store, "delivered") != [], "delivery")
    assert SECRET not in relay.proxy.logs.text()


async def test_an_ecom_callback_is_acknowledged_and_re_sent_until_the_app_is_up(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """eCom v2 tries a callback once: the proxy answers at once and keeps trying."""
    port = free_port()
    hooks = [{"path": ECOM, "kind": "ecom-callback", "deliver_to": f"http://127.0.0.1:{port}/cb"}]
    relay = await start_relay(emulator, start_proxy, tmp_path, port, hooks=hooks)
    body = b'{"orderId":"o-77","transactionInfo":{"status":"RESERVED"}}'
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            relay.proxy.at(ECOM + "/v2/payments/o-77"),
            data=body,
            headers={"Authorization": "app-auth-token"},
        ) as response,
    ):
        assert response.status == 200
    await eventually(lambda: relay.proxy.logs.events("webhook_retry") != [], "a failed attempt")
    await start_app(aiohttp_server, relay.app, port)
    await eventually(lambda: stored(relay.store, "delivered") != [], "delivery")
    (got,) = relay.app.received
    assert (got.body, got.header("Authorization")) == (body, "app-auth-token")


async def test_closing_the_relay_just_as_the_deliverer_is_woken_stops_it(relay: Relay) -> None:
    """A wake-up and the cancel at shutdown in the same loop turn: the cancel must win
    (Python 3.11's wait_for lost it, and the proxy hung for good at SIGTERM)."""
    runner = relay.proxy.runner
    assert isinstance(runner, ProxyRunner)
    webhooks = runner.proxy.state.webhooks
    assert webhooks is not None
    await eventually(lambda: webhooks.deliverer.lease.held, "the deliverer started")
    await asyncio.sleep(0.1)  # it is waiting for work now
    webhooks.deliverer.wake()
    await asyncio.wait_for(webhooks.close(), 5)


async def test_delivery_outlives_a_store_failure(relay: Relay) -> None:
    """The store's table vanishes for a while: the failure is logged, an event that
    cannot be stored gets 503 (so Vipps tries again), and delivery goes on once the
    store is back."""
    other = sqlite3.connect(relay.store)
    try:
        other.execute("ALTER TABLE events RENAME TO events_away")
        other.commit()
        await eventually(
            lambda: relay.proxy.logs.events("webhook_store_failed") != [], "a logged failure"
        )
        status, headers, _ = await relay.send(payment_event("order-during-failure"))
        assert (status, headers["Retry-After"]) == (503, "1")  # not stored: no 2xx
        other.execute("ALTER TABLE events_away RENAME TO events")
        other.commit()
    finally:
        other.close()
    body = payment_event("order-after-failure")
    assert (await relay.send(body))[0] == 200
    await eventually(lambda: relay.app.bodies() == [body], "delivery after the failure")


async def test_behind_a_load_balancer_the_public_url_is_what_is_verified(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """Vipps signed https://shop.example.com/vipps/events; the proxy hears /webhooks/vipps
    with its own Host: the public URL's host and path are checked, not the request's."""
    port = free_port()
    public = "https://shop.example.com/vipps/events"
    hook = webhooks_table(f"http://127.0.0.1:{port}/vipps/events", public_url=public)
    relay = await start_relay(emulator, start_proxy, tmp_path, port, hooks=[hook])
    await start_app(aiohttp_server, relay.app, port)
    body = payment_event("order-lb")
    for_public = vipps_headers(body, "shop.example.com", "/vipps/events")
    for_proxy = vipps_headers(body, relay.host, HOOK)
    async with aiohttp.ClientSession() as client:
        async with client.post(relay.proxy.at(HOOK), data=body, headers=for_proxy) as response:
            assert response.status == 401
        async with client.post(relay.proxy.at(HOOK), data=body, headers=for_public) as response:
            assert response.status == 200
    await eventually(lambda: relay.app.bodies() == [body], "delivery")


async def test_hop_by_hop_headers_are_not_delivered(relay: Relay) -> None:
    """Connection, the fields it names, and Proxy-Authorization stay with the hop that
    brought them; every other header reaches the app."""
    body = payment_event("order-hop")
    host, port = relay.proxy.address
    signed = vipps_headers(body, relay.host, HOOK)
    head = "".join(f"{k}: {v}\r\n" for k, v in signed.items())
    request = (
        f"POST {HOOK} HTTP/1.1\r\nHost: {relay.host}\r\nContent-Length: {len(body)}\r\n{head}"
        "Connection: close, X-Hop\r\nX-Hop: 1\r\nProxy-Authorization: Bearer k\r\n"
        "X-End-To-End: 2\r\n\r\n"
    ).encode() + body
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    await eventually(lambda: len(relay.app.received) == 1, "delivery")
    names = {name.lower() for name, _ in relay.app.received[0].headers}
    assert "x-end-to-end" in names
    assert not names & {"x-hop", "proxy-authorization"}
    assert relay.app.received[0].body == body


async def test_webhook_paths_need_no_client_key(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """Vipps cannot send Proxy-Authorization: the signature stands in for the client key;
    every other path still needs one."""
    port = free_port()
    relay = await start_relay(
        emulator, start_proxy, tmp_path, port, server={"client_keys": ["client-key-0123456789"]}
    )
    await start_app(aiohttp_server, relay.app, port)
    assert (await relay.send(payment_event("order-key")))[0] == 200
    async with (
        aiohttp.ClientSession() as client,
        client.get(relay.proxy.at("/epayment/v1/payments/x")) as response,
    ):
        assert response.status == 407


async def test_a_webhook_body_that_stalls_gets_408_after_body_timeout(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Webhook paths are open to the internet: a body that stops is bounded by
    ``body_timeout`` as on every other path (408, ``client_body_timeout``), not by the
    receiver's whole-body limit alone, and nothing is stored."""
    relay = await start_relay(
        emulator, start_proxy, tmp_path, free_port(), server={"body_timeout": 0.2}
    )
    reader, writer = await asyncio.open_connection(*relay.proxy.address)
    writer.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{" % HOOK.encode())
    try:
        async with asyncio.timeout(5):  # the receiver's own limit is 20 s
            answer = await reader.read(1000)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    (line,) = relay.proxy.logs.events("request_completed")
    assert (line["status"], line["error"]) == (408, "client_body_timeout")
    assert stored(relay.store) == []


@pytest.mark.parametrize(
    "rest",
    ["/../admin/x/shippingDetails", "/..%2fadmin/v2/payments/o-1", "/%2e%2e/admin/v2/payments/o-2"],
)
async def test_an_ecom_callback_path_that_climbs_out_of_its_prefix_gets_400(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    tmp_path: Path,
    aiohttp_server: Any,
    rest: str,
) -> None:
    """The rest of a callback's path is appended to deliver_to: a dot segment (or an
    encoded one) would reach the app outside deliver_to's path, so it is refused and
    nothing is stored or sent."""
    port = free_port()
    hooks = [{"path": ECOM, "kind": "ecom-callback", "deliver_to": f"http://127.0.0.1:{port}/cb"}]
    relay = await start_relay(emulator, start_proxy, tmp_path, port, hooks=hooks)
    relay.app.answer = {"orderId": "o-1"}
    await start_app(aiohttp_server, relay.app, port)
    answer = await raw_post(relay.proxy.address, ECOM + rest)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert stored(relay.store) == []
    assert relay.app.received == []
