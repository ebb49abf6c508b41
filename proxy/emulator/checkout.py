"""Checkout API v3 sessions: authenticated by client credentials, not by a token.

``POST /checkout/v3/session`` and ``GET /checkout/v3/session/{reference}`` want the
headers ``client_id``, ``client_secret``, ``Ocp-Apim-Subscription-Key`` and
``Merchant-Serial-Number`` of one sales unit, which is what the proxy's
``client-credentials`` auth mode sends.
"""

import secrets

from aiohttp import web

from .answers import Rejection, problem
from .credentials import (
    MERCHANT_SERIAL_NUMBER,
    require_merchant,
    require_subscription_key,
    unit_by_client,
)
from .keys import request_state
from .settings import SalesUnit
from .state import CheckoutSession
from .validation import REFERENCE, Findings, check_amount

SESSION_PATH = "/checkout/v3/session"


async def create_session(request: web.Request) -> web.StreamResponse:
    """``POST /checkout/v3/session``: 201 ``{"token", "checkoutFrontendUrl", "pollingUrl"}``."""
    unit = _authenticate(request)
    reference, amount = await _transaction(request)
    state = request_state(request)
    if reference in state.checkout_sessions:
        raise Rejection(
            problem(request, 409, "Conflict", "A session with this reference already exists.")
        )
    session = CheckoutSession(
        reference=reference,
        merchant_serial_number=unit.merchant_serial_number,
        session_id=secrets.token_urlsafe(16),
        amount=amount,
    )
    state.checkout_sessions[reference] = session
    token = "eyJ" + secrets.token_urlsafe(32)
    body = {
        "token": token,
        "checkoutFrontendUrl": f"https://checkout.vipps.no/v3/?token={token}",
        "pollingUrl": str(request.url.with_path(f"{SESSION_PATH}/{reference}", encoded=False)),
    }
    return web.json_response(body, status=201)


async def get_session(request: web.Request) -> web.StreamResponse:
    """``GET /checkout/v3/session/{reference}``: the session's state."""
    unit = _authenticate(request)
    session = request_state(request).checkout_sessions.get(request.match_info["reference"])
    if session is None or session.merchant_serial_number != unit.merchant_serial_number:
        raise Rejection(problem(request, 404, "Not Found", "No session with this reference."))
    return web.json_response(
        {
            "sessionId": session.session_id,
            "merchantSerialNumber": session.merchant_serial_number,
            "reference": session.reference,
            "sessionState": "SessionCreated",
            "paymentDetails": {"amount": session.amount, "state": "CREATED"},
        }
    )


def _authenticate(request: web.Request) -> SalesUnit:
    unit = require_subscription_key(request)
    headers = request.headers
    if unit_by_client((unit,), headers.get("client_id"), headers.get("client_secret")) is None:
        raise Rejection(
            problem(request, 401, "Unauthorized", "Invalid client_id or client_secret.")
        )
    if MERCHANT_SERIAL_NUMBER not in headers:
        raise Rejection(
            problem(request, 400, "Bad Request", "The Merchant-Serial-Number header is required.")
        )
    require_merchant(request, unit)
    return unit


async def _transaction(request: web.Request) -> tuple[str, dict[str, object]]:
    """The session's reference and amount, from ``{"transaction": {...}}``."""
    findings = Findings()
    try:
        body: object = await request.json()
    except ValueError:
        body = None
    transaction = body.get("transaction") if isinstance(body, dict) else None
    if not isinstance(transaction, dict):
        transaction = {}
        findings.add("transaction", "is required: an object with amount and reference")
    amount = check_amount(transaction.get("amount"), "transaction.amount", findings)
    reference = transaction.get("reference")
    if not isinstance(reference, str) or REFERENCE.fullmatch(reference) is None:
        findings.add("transaction.reference", "is required: 8 to 64 of a-z, A-Z, 0-9 and '-'")
    if amount is None or not isinstance(reference, str) or findings.items:
        raise Rejection(
            problem(
                request,
                400,
                "Bad Request",
                "The request is invalid; see extraDetails.",
                extra_details=findings.items,
            )
        )
    return reference, amount.as_json()
