"""Issue 21, points 4, 8 and 9 over real sockets: ordering per hook and payment (an
unsigned eCom sender cannot hold back Vipps' signed webhooks), when an event was
acknowledged, eCom paths and methods as Vipps uses them, and Vipps retries whatever
their age."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.webhooks.store import Store
from tests.conftest import ProxyFactory, RunningEmulator, free_port
from tests.test_webhooks_relay import Relay, start_app, start_relay
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

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class RefusingCallbacks(LegacyApp):
    """A legacy app that refuses every eCom callback (under /cb) and takes the rest."""

    async def handle(self, request: web.Request) -> web.Response:
        answer = await super().handle(request)
        if request.path.startswith("/cb"):
            return web.Response(status=500, text="refused")
        return answer


def both_hooks(port: int, **ecom: Any) -> list[dict[str, Any]]:
    deliver = f"http://127.0.0.1:{port}"
    return [
        webhooks_table(f"{deliver}/vipps/events"),
        {"path": ECOM, "kind": "ecom-callback", "deliver_to": f"{deliver}/cb", **ecom},
    ]


async def started(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    tmp_path: Path,
    aiohttp_server: Any,
    app: LegacyApp,
    **ecom: Any,
) -> Relay:
    port = free_port()
    relay = await start_relay(emulator, start_proxy, tmp_path, port, hooks=both_hooks(port, **ecom))
    relay.app = app
    await start_app(aiohttp_server, app, port)
    return relay


@pytest.fixture
async def relay(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> Relay:
    """The proxy relaying HOOK (and ECOM) to a running legacy app."""
    return await started(emulator, start_proxy, tmp_path, aiohttp_server, LegacyApp())


async def post(relay: Relay, path: str, body: bytes, method: str = "POST") -> int:
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, relay.proxy.at(path), data=body) as response,
    ):
        return response.status


async def test_a_hostile_keyless_ecom_sender_never_holds_back_signed_webhooks(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """Keyless eCom callbacks naming payment ``order-42`` race Vipps' signed webhooks
    of ``order-42``; the app refuses every callback. The signed ones are all delivered,
    in order, while the callbacks keep being retried."""
    relay = await started(emulator, start_proxy, tmp_path, aiohttp_server, RefusingCallbacks())
    signed = [payment_event("order-42", name, n) for n, name in enumerate(
        ["CREATED", "AUTHORIZED", "CAPTURED", "REFUNDED"]
    )]  # fmt: skip
    hostile = [b'{"reference":"order-42","n":%d}' % n for n in range(8)]

    async def hostile_sender() -> list[int]:
        return [await post(relay, f"{ECOM}/anything/{n}", body) for n, body in enumerate(hostile)]

    async def vipps() -> list[int]:
        return [(await relay.send(body))[0] for body in signed]

    flood, genuine = await asyncio.gather(hostile_sender(), vipps())
    assert set(flood) == {200}  # stored: the relay cannot tell them from eCom's own
    assert genuine == [200] * 4
    await eventually(lambda: len(stored(relay.store, "delivered")) == 4, "the signed delivered")
    to_hook = [r.body for r in relay.app.received if r.path_qs == "/vipps/events"]
    assert to_hook == signed
    assert all(e.hook == ECOM for e in stored(relay.store, "pending"))


async def test_every_delivery_carries_when_the_proxy_acknowledged_the_event(
    relay: Relay,
) -> None:
    """``Vipps-Proxy-Received-At``: RFC 3339 UTC with milliseconds, the time of the 2xx,
    the same on a retry."""
    relay.app.failing.add("order-at")
    before = time.time()
    assert (await relay.send(payment_event("order-at")))[0] == 200
    after = time.time()
    await eventually(lambda: len(relay.app.received) >= 2, "a first attempt and a retry")
    first, second = (r.header("Vipps-Proxy-Received-At") for r in relay.app.received[:2])
    assert STAMP.fullmatch(first), first
    assert first == second
    when = datetime.fromisoformat(first.replace("Z", "+00:00")).timestamp()
    assert before - 0.001 <= when <= after + 0.001


async def test_a_received_at_header_from_the_sender_never_reaches_the_app(relay: Relay) -> None:
    """Only the proxy says when it acknowledged an event."""
    forged = "1999-01-01T00:00:00.000Z"
    assert (await relay.send(payment_event("order-f"), **{"Vipps-Proxy-Received-At": forged}))[
        0
    ] == 200
    await eventually(lambda: len(relay.app.received) == 1, "delivery")
    values = [v for k, v in relay.app.received[0].headers if k.lower() == "vipps-proxy-received-at"]
    assert len(values) == 1
    assert values[0] != forged


async def test_a_callback_prefix_ending_in_a_slash_is_called_back(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """``callbackPrefix = https://shop/ecom/``: Vipps calls ``/ecom//v2/payments/o-3``;
    it is stored and delivered as ``/cb/v2/payments/o-3``, keyed by its orderId."""
    relay = await started(emulator, start_proxy, tmp_path, aiohttp_server, LegacyApp())
    body = b'{"orderId":"o-3","transactionInfo":{"status":"RESERVED"}}'
    assert await post(relay, ECOM + "//v2/payments/o-3", body) == 200
    await eventually(lambda: len(relay.app.received) == 1, "delivery")
    assert relay.app.received[0].path_qs == "/cb/v2/payments/o-3"
    (event,) = stored(relay.store)
    assert event.ordering_key == "o-3"


async def test_a_callback_keeps_the_query_of_deliver_to_after_the_appended_path(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """``deliver_to = .../cb?app_key=k``: Vipps' ``/v2/payments/o-8`` goes into the
    path, and the app key stays the query (not ``?app_key=k/v2/payments/o-8``)."""
    port = free_port()
    hooks = both_hooks(port, deliver_to=f"http://127.0.0.1:{port}/cb?app_key=k-1")
    relay = await start_relay(emulator, start_proxy, tmp_path, port, hooks=hooks)
    await start_app(aiohttp_server, relay.app, port)
    body = b'{"orderId":"o-8","transactionInfo":{"status":"RESERVED"}}'
    assert await post(relay, ECOM + "/v2/payments/o-8", body) == 200
    await eventually(lambda: len(relay.app.received) == 1, "delivery")
    assert relay.app.received[0].path_qs == "/cb/v2/payments/o-8?app_key=k-1"


async def test_three_slashes_after_the_callback_prefix_are_still_refused(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    relay = await started(emulator, start_proxy, tmp_path, aiohttp_server, LegacyApp())
    assert await post(relay, ECOM + "///v2/payments/o-3", b"{}") == 400
    assert stored(relay.store) == []


async def test_ecom_synchronous_paths_take_only_the_method_vipps_uses(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """eCom v2: ``POST .../v2/payments/{orderId}/shippingDetails`` and ``DELETE
    .../v2/consents/{userId}``; any other method is 405 with ``Allow``, never reaches
    the app and is never stored."""
    relay = await started(emulator, start_proxy, tmp_path, aiohttp_server, LegacyApp())
    shipping, consent = ECOM + "/v2/payments/o-5/shippingDetails", ECOM + "/v2/consents/u-1"
    async with aiohttp.ClientSession() as client:
        for method, path, allow in [
            ("GET", shipping, "POST"),
            ("PROPFIND", shipping, "POST"),
            ("DELETE", shipping, "POST"),
            ("PUT", shipping, "POST"),
            ("POST", consent, "DELETE"),
            ("GET", consent, "DELETE"),
            ("PATCH", consent, "DELETE"),
        ]:
            async with client.request(method, relay.proxy.at(path), data=b"{}") as response:
                assert (method, path, response.status) == (method, path, 405)
                assert response.headers["Allow"] == allow
                assert response.content_type == "application/problem+json"
        async with client.delete(relay.proxy.at(consent)) as response:
            assert response.status == 200
    assert [(r.method, r.path_qs) for r in relay.app.received] == [
        ("DELETE", "/cb/v2/consents/u-1")
    ]
    assert stored(relay.store) == []


async def test_a_webhook_path_answers_405_with_allow_post(relay: Relay) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.get(relay.proxy.at(HOOK)) as response,
    ):
        assert response.status == 405
        assert response.headers["Allow"] == "POST"


async def test_an_event_signed_two_hours_ago_is_delivered_once_and_its_replay_is_a_duplicate(
    relay: Relay,
) -> None:
    """Vipps retries for 7 days and may keep the first ``x-ms-date``: an event signed two
    hours ago and never seen is taken in and delivered; the same bytes again are a
    duplicate (200, not delivered twice)."""
    body = payment_event("order-late")
    signed = vipps_headers(body, relay.host, HOOK, date=formatdate(time.time() - 7200, usegmt=True))
    first = await relay.send(body, **signed)
    assert first[0] == 200
    await eventually(lambda: len(stored(relay.store, "delivered")) == 1, "delivery")
    again = await relay.send(body, **signed)
    assert again[0] == 200
    assert again[1]["Vipps-Proxy-Event-Id"] == first[1]["Vipps-Proxy-Event-Id"]
    (received,) = relay.proxy.logs.events("webhook_received")[-1:]
    assert received["result"] == "duplicate"
    assert stored(relay.store, "pending") == []  # the duplicate was never queued
    assert relay.app.bodies() == [body]
    assert len(stored(relay.store)) == 1


async def test_a_replay_that_still_verifies_is_a_duplicate_whatever_pruning_does(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, aiohttp_server: Any
) -> None:
    """``max_age`` 15 days: an event delivered 20 days ago whose ``x-ms-date`` was 10
    days ahead of its arrival still verifies today; the start-up prune keeps it (twice
    ``max_age``), so its replay is a duplicate and not delivered again."""
    now = time.time()
    day = 86400.0
    body = payment_event("order-old")
    store = Store(tmp_path / "events.sqlite3")
    try:
        event_id, _ = store.add(
            hook=HOOK, path=HOOK, method="POST", headers=[], body=body,
            ordering_key="order-old", now=now - 20 * day,
        )  # fmt: skip
        store.mark_delivered(event_id, 1)
    finally:
        store.close()
    port = free_port()
    hook = webhooks_table(f"http://127.0.0.1:{port}/vipps/events", max_age=15 * day)
    relay = await start_relay(emulator, start_proxy, tmp_path, port, hooks=[hook])
    await start_app(aiohttp_server, relay.app, port)
    fresh = payment_event("order-new")
    assert (await relay.send(fresh))[0] == 200  # delivered after the start-up prune ran
    await eventually(lambda: relay.app.bodies() == [fresh], "the fresh event delivered")
    signed = vipps_headers(body, relay.host, HOOK, date=formatdate(now - 10 * day, usegmt=True))
    status, headers, _ = await relay.send(body, **signed)
    assert (status, headers["Vipps-Proxy-Event-Id"]) == (200, event_id)
    assert relay.proxy.logs.events("webhook_received")[-1]["result"] == "duplicate"
    assert stored(relay.store, "pending") == []
    assert relay.app.bodies() == [fresh]
