"""The emulator as Vipps documents it: webhook registration limits and a pspReference
per operation (https://developer.vippsmobilepay.com/docs/APIs/webhooks-api/events/:
"up to 25 webhook registrations per event per MSN"; "Each payment operation (i.e.,
create, capture, refund, cancel) will have a unique pspReference")."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from proxy.emulator import DEMO_SALES_UNIT_2, create_emulator

from .test_emulator import adjust, approved_payment, authed
from .webhook_peers import LegacyApp, eventually

Client = TestClient[Any, Any]
WEBHOOKS = "/webhooks/v1/webhooks"
CAPTURED = "epayments.payment.captured.v1"


async def register(client: Client, headers: dict[str, str], url: str, *events: str) -> int:
    response = await client.post(
        WEBHOOKS, json={"url": url, "events": list(events)}, headers=headers
    )
    return response.status


async def test_25_registrations_per_event_per_msn_and_no_more(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(create_emulator())
    headers = await authed(client)
    first = [
        await register(client, headers, f"https://example.com/{n}", CAPTURED) for n in range(25)
    ]
    one_more = await register(client, headers, "https://example.com/26", CAPTURED)
    other_event = await register(
        client, headers, "https://example.com/26", "epayments.payment.created.v1"
    )
    other_msn = await register(
        client, await authed(client, DEMO_SALES_UNIT_2), "https://example.com/x", CAPTURED
    )
    assert first == [201] * 25
    assert one_more == 400
    assert (other_event, other_msn) == (201, 201)


async def test_each_event_in_the_log_has_its_own_psp_reference(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await aiohttp_client(create_emulator())
    headers = await authed(client)
    await approved_payment(client, headers)
    await adjust(client, headers, "capture", 2_000, "capture-1")
    events = await (
        await client.get("/epayment/v1/payments/order-123456/events", headers=headers)
    ).json()
    payment = await (await client.get("/epayment/v1/payments/order-123456", headers=headers)).json()
    references = [event["pspReference"] for event in events]
    assert len(set(references)) == len(references) == 3
    assert payment["pspReference"] == references[0]  # the creation's, as Vipps answers


async def test_each_webhook_event_of_a_payment_has_its_own_psp_reference(
    aiohttp_client: AiohttpClient, aiohttp_server: Any
) -> None:
    app = LegacyApp()
    server = await aiohttp_server(app.app(), host="127.0.0.1")
    client = await aiohttp_client(create_emulator())
    headers = await authed(client)
    url = str(server.make_url("/hooks"))
    events = ("created", "authorized", "captured")
    assert (
        await register(client, headers, url, *(f"epayments.payment.{e}.v1" for e in events)) == 201
    )
    await approved_payment(client, headers)
    await adjust(client, headers, "capture", 2_000, "capture-1")
    await eventually(lambda: len(app.received) == 3, "three webhook events")
    references = {orjson.loads(body)["pspReference"] for body in app.bodies()}
    assert len(references) == 3
