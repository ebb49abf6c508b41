"""ePayment API v1: create, get, events, capture, cancel, refund, and the test approve.

Payments live in ``EmulatorState.payments`` by reference and are visible only to the
sales unit that created them. A new payment stays CREATED until the user approves it:
here ``POST /epayment/v1/test/payments/{reference}/approve``, the test endpoint of
Vipps' spec, or ``EmulatorSettings.auto_approve`` seconds after its creation (the demo
sets that, so its payments become AUTHORIZED as if someone said yes in the app).
"""

import asyncio
import secrets
from collections.abc import Callable

from aiohttp import web

from .answers import Rejection, problem
from .credentials import authenticate_api
from .keys import request_state
from .payments import InvalidAdjustment, Money, Payment, PaymentConflict
from .settings import SalesUnit
from .validation import Findings, check_create, check_modification
from .webhooks import HUB_KEY, notify

PAYMENTS_PATH = "/epayment/v1/payments"
IDEMPOTENCY_KEY = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 50  # the Idempotency-Key parameter's maxLength in epayment.local.yml


async def create_payment(request: web.Request) -> web.StreamResponse:
    """``POST /epayment/v1/payments``: 201; a replay with the same key gives the same answer."""
    unit = authenticate_api(request)
    key = _idempotency_key(request)
    findings = Findings()
    wanted = check_create(await _json_body(request), findings)
    if wanted is None:
        raise Rejection(_invalid(request, findings))
    state = request_state(request)
    earlier = state.payments.get(wanted.reference)
    if earlier is not None:
        if earlier.merchant_serial_number == unit.merchant_serial_number and (
            earlier.idempotency_key == key
        ):
            return _created(earlier)
        raise Rejection(
            problem(request, 409, "Conflict", "A payment with this reference already exists.")
        )
    payment = Payment(
        reference=wanted.reference,
        merchant_serial_number=unit.merchant_serial_number,
        amount=wanted.amount,
        payment_method=wanted.payment_method,
        user_flow=wanted.user_flow,
        idempotency_key=key,
        redirect_url=_redirect_url(wanted.user_flow),
        metadata=wanted.metadata,
    )
    state.payments[payment.reference] = payment
    if state.settings.auto_approve is not None:
        _approve_later(request, payment, state.settings.auto_approve)
    return _created(payment)


async def get_payment(request: web.Request) -> web.StreamResponse:
    """``GET /epayment/v1/payments/{reference}``: the ``GetPaymentResponse``."""
    return web.json_response(_payment(request).as_json())


async def get_events(request: web.Request) -> web.StreamResponse:
    """``GET /epayment/v1/payments/{reference}/events``: the event log."""
    return web.json_response(_payment(request).events_json())


async def capture_payment(request: web.Request) -> web.StreamResponse:
    """``POST .../{reference}/capture`` with ``{"modificationAmount": Amount}``."""
    key, payment = _adjustment_target(request)
    amount = await _modification_amount(request)
    return _adjusted(request, payment, lambda: payment.capture(amount, key))


async def refund_payment(request: web.Request) -> web.StreamResponse:
    """``POST .../{reference}/refund`` with ``{"modificationAmount": Amount}``."""
    key, payment = _adjustment_target(request)
    amount = await _modification_amount(request)
    return _adjusted(request, payment, lambda: payment.refund(amount, key))


async def cancel_payment(request: web.Request) -> web.StreamResponse:
    """``POST .../{reference}/cancel``: releases what is not captured."""
    key, payment = _adjustment_target(request)
    return _adjusted(request, payment, lambda: payment.cancel(key))


async def approve_payment(request: web.Request) -> web.StreamResponse:
    """``POST /epayment/v1/test/payments/{reference}/approve``: the user says yes."""
    payment = _payment(request)
    _adjusted(request, payment, payment.authorize)
    return web.Response(status=200)


def _payment(request: web.Request) -> Payment:
    return _find(request, authenticate_api(request))


def _find(request: web.Request, unit: SalesUnit) -> Payment:
    state = request_state(request)
    payment = state.payments.get(request.match_info["reference"])
    if payment is None or payment.merchant_serial_number != unit.merchant_serial_number:
        raise Rejection(problem(request, 404, "Not Found", "No payment with this reference."))
    _approve_when_due(payment, state.settings.auto_approve)
    return payment


def _approve_when_due(payment: Payment, after: float | None) -> None:
    """With ``auto_approve``, a CREATED payment old enough is approved before it is seen."""
    if after is not None and payment.state == "CREATED" and payment.age() >= after:
        payment.authorize()


def _approve_later(request: web.Request, payment: Payment, after: float) -> None:
    """Approve ``payment`` ``after`` seconds from now, as the user would, and send its
    webhooks then: an app that only listens for events sees AUTHORIZED too."""
    hub, state = request.config_dict[HUB_KEY], request_state(request)

    def approve() -> None:
        if payment.state == "CREATED":
            payment.authorize()
        notify(hub, state)

    hub.timers.append(asyncio.get_running_loop().call_later(after, approve))


def _adjustment_target(request: web.Request) -> tuple[str, Payment]:
    unit = authenticate_api(request)
    key = _idempotency_key(request)
    return key, _find(request, unit)


def _adjusted(request: web.Request, payment: Payment, change: Callable[[], None]) -> web.Response:
    try:
        change()
    except PaymentConflict as conflict:
        raise Rejection(problem(request, 409, "Conflict", str(conflict))) from None
    except InvalidAdjustment as invalid:
        raise Rejection(problem(request, 400, "Bad Request", str(invalid))) from None
    return web.json_response(payment.modification_json())


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get(IDEMPOTENCY_KEY, "")
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        findings = Findings()
        findings.add(IDEMPOTENCY_KEY, f"is required, 1 to {MAX_IDEMPOTENCY_KEY} characters")
        raise Rejection(_invalid(request, findings))
    return key


async def _json_body(request: web.Request) -> object:
    try:
        body: object = await request.json()
    except ValueError:
        findings = Findings()
        findings.add("body", "is not valid JSON")
        raise Rejection(_invalid(request, findings)) from None
    return body


async def _modification_amount(request: web.Request) -> Money:
    findings = Findings()
    amount = check_modification(await _json_body(request), findings)
    if amount is None:
        raise Rejection(_invalid(request, findings))
    return amount


def _invalid(request: web.Request, findings: Findings) -> web.Response:
    return problem(
        request,
        400,
        "Bad Request",
        "The request is invalid; see extraDetails.",
        extra_details=findings.items,
    )


def _created(payment: Payment) -> web.Response:
    body = {"reference": payment.reference}
    if payment.redirect_url is not None:
        body["redirectUrl"] = payment.redirect_url
    return web.json_response(body, status=201)


def _redirect_url(user_flow: str) -> str | None:
    token = secrets.token_urlsafe(24)
    if user_flow == "PUSH_MESSAGE":
        return None
    if user_flow == "QR":
        return f"https://qr.vipps.no/generate/qr.png?token={token}"
    return f"https://landing.vipps.no/?token={token}"
