"""The Webhooks API (``/webhooks/v1/webhooks``) and the signed events it sends.

Registering returns an id and a secret once. On every new ePayment event of a sales
unit's payments, each of its registrations for ``epayments.payment.<name>.v1`` gets a
signed POST (Vipps' HMAC-SHA256 scheme), retried with backoff on anything but a 2xx,
up to ``MAX_ATTEMPTS`` times (Vipps keeps retrying; an emulator need not).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Final

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from proxy.secret import Secret
from proxy.webhooks.verify import sign_headers

from .answers import Rejection, problem
from .credentials import authenticate_api
from .injection import Handler
from .keys import request_state
from .payments import Payment, PaymentEvent
from .state import EmulatorState

WEBHOOKS_PATH: Final = "/webhooks/v1/webhooks"
EVENT_TYPES: Final = tuple(
    f"epayments.payment.{name}.v1"
    for name in (
        "created",
        "aborted",
        "expired",
        "cancelled",
        "captured",
        "refunded",
        "authorized",
        "terminated",
    )
)
# Registrations per event type and sales unit: "Up to 25 webhook registrations per event
# type, per MSN" (Webhooks API guide, "Webhook limits",
# https://developer.vippsmobilepay.com/docs/APIs/webhooks-api/api-guide; the older
# webhooks.swagger.yaml's 5 is out of date).
MAX_PER_EVENT: Final = 25
# Not Vipps' figure: Vipps retries a webhook until it succeeds ("that webhook will be
# retried", Webhooks API FAQ); an emulator gives up after this many tries.
MAX_ATTEMPTS: Final = 8
FIRST_BACKOFF: Final = 0.5


@dataclass(frozen=True)
class Registration:
    id: str
    merchant_serial_number: str
    url: str
    events: tuple[str, ...]
    secret: Secret = field(repr=False)

    def as_json(self) -> dict[str, object]:
        return {"id": self.id, "url": self.url, "events": list(self.events)}


@dataclass
class Delivery:
    """One webhook the emulator sent (or tried to), for tests to look at."""

    registration: str
    url: str
    body: bytes
    attempts: int = 0
    status: int = 0


@dataclass
class WebhookHub:
    """Registrations, what was notified per payment, and the sends in flight."""

    registrations: dict[str, Registration] = field(default_factory=dict)
    notified: dict[str, int] = field(default_factory=dict)  # reference -> events sent
    deliveries: list[Delivery] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)  # the emulator's own changes
    session: aiohttp.ClientSession | None = None


HUB_KEY: Final = web.AppKey("vipps_emulator_webhooks", WebhookHub)


def add_webhook_routes(app: web.Application) -> None:
    app[HUB_KEY] = WebhookHub()
    app.router.add_post(WEBHOOKS_PATH, register)
    app.router.add_get(WEBHOOKS_PATH, list_registrations)
    app.router.add_delete(WEBHOOKS_PATH + "/{id}", delete_registration)
    app.on_cleanup.append(_stop)


def webhook_hub(app: web.Application) -> WebhookHub:
    return app[HUB_KEY]


async def register(request: web.Request) -> web.Response:
    unit = authenticate_api(request)
    try:
        doc = orjson.loads(await request.read())
        url, wanted = str(doc["url"]), tuple(str(e) for e in doc["events"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        detail = "url and events are required"
        raise Rejection(problem(request, 400, "Bad Request", detail)) from None
    if not URL(url).is_absolute() or not wanted:
        raise Rejection(problem(request, 400, "Bad Request", "url and events are required"))
    hub = request.config_dict[HUB_KEY]
    for event in wanted:
        same = [
            r
            for r in hub.registrations.values()
            if event in r.events and r.merchant_serial_number == unit.merchant_serial_number
        ]
        if len(same) >= MAX_PER_EVENT:
            detail = f"At most {MAX_PER_EVENT} webhooks can be registered per event"
            raise Rejection(problem(request, 400, "Bad Request", detail))
    registration = Registration(
        str(uuid.uuid4()),
        unit.merchant_serial_number,
        url,
        wanted,
        Secret(secrets.token_urlsafe(32)),
    )
    hub.registrations[registration.id] = registration
    body = {"id": registration.id, "secret": registration.secret.reveal()}
    return web.json_response(body, status=201)


async def list_registrations(request: web.Request) -> web.Response:
    unit = authenticate_api(request)
    hub = request.config_dict[HUB_KEY]
    mine = [
        r.as_json()
        for r in hub.registrations.values()
        if r.merchant_serial_number == unit.merchant_serial_number
    ]
    return web.json_response({"webhooks": mine})


async def delete_registration(request: web.Request) -> web.Response:
    unit = authenticate_api(request)
    hub = request.config_dict[HUB_KEY]
    found = hub.registrations.get(request.match_info["id"])
    if found is None or found.merchant_serial_number != unit.merchant_serial_number:
        raise Rejection(problem(request, 404, "Not Found", "No webhook with this id."))
    del hub.registrations[found.id]
    return web.Response(status=204)


@web.middleware
async def notify_changes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """After each call, send the payments' new events to the registrations for them."""
    response = await handler(request)
    notify(request.config_dict[HUB_KEY], request_state(request))
    return response


def notify(hub: WebhookHub, state: EmulatorState) -> None:
    """Send every payment's events not sent yet to the registrations for them (after a
    call, or when the emulator changes a payment by itself)."""
    if hub.registrations:
        for payment in state.payments.values():
            sent = hub.notified.get(payment.reference, 0)
            for event in payment.events[sent:]:
                _send_all(hub, payment, event)
            hub.notified[payment.reference] = len(payment.events)


def event_body(payment: Payment, event: PaymentEvent) -> bytes:
    """An ePayment webhook body, as Vipps sends it."""
    return orjson.dumps(
        {
            "msn": payment.merchant_serial_number,
            "reference": payment.reference,
            "pspReference": event.psp_reference,
            "name": event.name,
            "amount": event.amount.as_json(),
            "timestamp": event.timestamp,
            "idempotencyKey": event.idempotency_key,
            "success": event.success,
        }
    )


def _send_all(hub: WebhookHub, payment: Payment, event: PaymentEvent) -> None:
    kind = f"epayments.payment.{event.name.lower()}.v1"
    body = event_body(payment, event)
    for registration in hub.registrations.values():
        if (
            kind in registration.events
            and registration.merchant_serial_number == payment.merchant_serial_number
        ):
            delivery = Delivery(registration.id, registration.url, body)
            hub.deliveries.append(delivery)
            task = asyncio.create_task(_deliver(hub, registration, delivery))
            hub.tasks.add(task)
            task.add_done_callback(hub.tasks.discard)


async def _deliver(hub: WebhookHub, registration: Registration, delivery: Delivery) -> None:
    if hub.session is None:
        hub.session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    url = URL(registration.url)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        delivery.attempts = attempt
        headers = sign_headers(registration.secret, url, delivery.body, formatdate(usegmt=True))
        headers["Content-Type"] = "application/json"
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with hub.session.post(
                url,
                data=delivery.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
                allow_redirects=False,
            ) as response:
                delivery.status = response.status
                if 200 <= response.status < 300:
                    return
        await asyncio.sleep(FIRST_BACKOFF * 2 ** (attempt - 1))


async def _stop(app: web.Application) -> None:
    hub = app[HUB_KEY]
    for timer in hub.timers:
        timer.cancel()
    for task in hub.tasks:
        task.cancel()
    await asyncio.gather(*hub.tasks, return_exceptions=True)
    if hub.session is not None:
        await hub.session.close()
