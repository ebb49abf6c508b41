"""eCom v2 (``/ecomm/v2/payments``): initiate, details, capture, refund, cancel, the
test approve, and the callback to ``callbackPrefix``.

An initiated order waits for the user (``INITIATE``) until it is approved: by the
spec's test endpoint ``POST /ecomm/v2/integration-test/payments/{orderId}/approve``,
by the admin app's ``POST /ecom/{orderId}/approve``, or ``auto_approve`` seconds after
its initiation (the demo's ``--auto-approve``). Approval reserves the amount and POSTs
the callback to ``{callbackPrefix}/v2/payments/{orderId}`` with the merchant's
``authToken`` as ``Authorization``, once, as eCom does (it never retries): status
``RESERVED`` for a regular payment, ``RESERVE`` for an express one (the eCom guide's
"Callback statuses"). Errors are eCom's: a JSON array of ``Error`` objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import uuid
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web

from .credentials import authenticate_api
from .ecomorders import MIN_AMOUNT, EcomError, EcomOrder, EcomOrders
from .injection import Handler, with_api_faults
from .keys import STATE_KEY, request_state
from .payments import utc_timestamp
from .settings import SalesUnit

ECOM_PATH: Final = "/ecomm/v2/payments"
ORDER: Final = ECOM_PATH + "/{order_id}"
APPROVE_PATH: Final = "/ecomm/v2/integration-test/payments/{order_id}/approve"
# "Vipps callbacks require a response within 3 seconds; otherwise, they will time out."
# (eCom API guide, "Callbacks", vippsas/vipps-ecom-api a2a3ebd, vipps-ecom-api.md)
CALLBACK_TIMEOUT: Final = 3.0
EXPRESS: Final = "eComm Express Payment"
ORDER_ID: Final = re.compile(r"[a-zA-Z0-9-]{1,50}")  # the spec's orderId pattern
MAX_REQUEST_ID: Final = 40  # the spec: X-Request-Id "Max 40 characters"
REQUEST_ID: Final = "X-Request-Id"

ECOM_KEY: Final = web.AppKey("vipps_emulator_ecom", EcomOrders)


def add_ecom_routes(app: web.Application) -> None:
    """The eCom routes, each subject to the API faults, on ``app``."""
    app[ECOM_KEY] = app[STATE_KEY].ecom
    routes: list[tuple[str, str, Handler]] = [
        ("POST", ECOM_PATH, initiate),
        ("GET", ORDER + "/details", details),
        ("POST", ORDER + "/capture", capture),
        ("POST", ORDER + "/refund", refund),
        ("PUT", ORDER + "/cancel", cancel),
        ("POST", APPROVE_PATH, force_approve),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, with_api_faults(handler))
    app.on_cleanup.append(_stop)


async def initiate(request: web.Request) -> web.StreamResponse:
    """``POST /ecomm/v2/payments``: the order waits for the user; its deeplink URL."""
    unit = authenticate_api(request)
    order = _new_order(unit, await _body(request))
    state = request_state(request)
    key = (unit.merchant_serial_number, order.order_id)
    if key in state.ecom.orders:
        raise EcomError(
            400,
            "Merchant",
            "34",
            "Duplicate orderId. The orderId must be unique for each MSN. "
            "It has already been used for this MSN.",
        )
    state.ecom.orders[key] = order
    if state.settings.auto_approve is not None:
        loop = asyncio.get_running_loop()
        later = loop.call_later(state.settings.auto_approve, _approve_if_waiting, state.ecom, order)
        state.ecom.timers.append(later)
    token = secrets.token_urlsafe(24)
    url = f"https://api.vipps.no/dwo-api-application/v1/deeplink/vippsgateway?v=2&token={token}"
    return web.json_response({"orderId": order.order_id, "url": url})


async def details(request: web.Request) -> web.StreamResponse:
    """``GET .../{orderId}/details``: the transaction log, newest first."""
    return web.json_response(_order(request).details_json())


async def capture(request: web.Request) -> web.StreamResponse:
    """``POST .../{orderId}/capture``: all that is left, or ``transaction.amount``."""
    order = _order(request)
    amount, text = _amount_and_text(await _body(request))
    request_id = _request_id(request, required=0 < amount < order.remaining_to_capture())
    return web.json_response(order.capture(amount, text, request_id))


async def refund(request: web.Request) -> web.StreamResponse:
    """``POST .../{orderId}/refund``: up to what was captured and not refunded."""
    order = _order(request)
    amount, text = _amount_and_text(await _body(request))
    return web.json_response(order.refund(amount, text, _request_id(request, required=False)))


async def cancel(request: web.Request) -> web.StreamResponse:
    """``PUT .../{orderId}/cancel``: only before a capture, unless releasing the rest."""
    order = _order(request)
    body = await _body(request)
    _, text = _amount_and_text(body)
    release = body.get("shouldReleaseRemainingFunds", False)
    if not isinstance(release, bool):
        raise _invalid("shouldReleaseRemainingFunds", "must be true or false")
    return web.json_response(order.cancel(text, release))


async def force_approve(request: web.Request) -> web.StreamResponse:
    """``POST /ecomm/v2/integration-test/payments/{orderId}/approve``: the user says yes
    (not for express payments, as the spec says)."""
    order = _order(request)
    if order.express:
        raise EcomError(400, "InvalidRequest", "paymentType", "Express checkout is not supported.")
    approve(request_state(request).ecom, order)
    return web.Response(status=200)


def approve(orders: EcomOrders, order: EcomOrder) -> None:
    """Reserve ``order`` as its user would, and send its callback."""
    order.approve()
    if order.callback_prefix:
        task = asyncio.create_task(_callback(orders, order))
        orders.tasks.add(task)
        task.add_done_callback(orders.tasks.discard)


def find_order(orders: EcomOrders, order_id: str, msn: str | None) -> EcomOrder | None:
    """The order ``order_id`` of ``msn`` (of any sales unit, if only one has it)."""
    found = [o for (m, i), o in orders.orders.items() if i == order_id and msn in (None, m)]
    return found[0] if len(found) == 1 else None


def error_answer(error: EcomError) -> web.Response:
    """An eCom error: a JSON array of one ``Error``."""
    body = {
        "errorGroup": error.group,
        "errorCode": error.code,
        "errorMessage": error.message,
        "contextId": str(uuid.uuid4()),
    }
    return web.json_response([body], status=error.status)


def _approve_if_waiting(orders: EcomOrders, order: EcomOrder) -> None:
    if order.status == "INITIATE":
        approve(orders, order)


def _order(request: web.Request) -> EcomOrder:
    unit = authenticate_api(request)
    order_id = request.match_info["order_id"]
    order = request_state(request).ecom.orders.get((unit.merchant_serial_number, order_id))
    if order is None:
        raise EcomError(
            404,
            "Merchant",
            "35",
            f"The orderId '{order_id}' does not exist for MSN {unit.merchant_serial_number}.",
        )
    return order


def _new_order(unit: SalesUnit, body: dict[str, Any]) -> EcomOrder:
    merchant, transaction = body.get("merchantInfo"), body.get("transaction")
    if not isinstance(merchant, dict):
        raise _invalid("merchantInfo", "is required")
    if not isinstance(transaction, dict):
        raise _invalid("transaction", "is required")
    for name in ("callbackPrefix", "fallBack"):
        if not isinstance(merchant.get(name), str):
            raise _invalid(f"merchantInfo.{name}", "is required")
    order_id = transaction.get("orderId")
    if not isinstance(order_id, str) or not ORDER_ID.fullmatch(order_id):
        raise _invalid("transaction.orderId", "must be 1 to 50 of a-z, A-Z, 0-9 and '-'")
    amount = transaction.get("amount")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < MIN_AMOUNT:
        raise _invalid("transaction.amount", f"must be a whole number of øre, {MIN_AMOUNT} or more")
    return EcomOrder(
        order_id=order_id,
        merchant_serial_number=unit.merchant_serial_number,
        amount=amount,
        transaction_text=_text(transaction),
        express=merchant.get("paymentType") == EXPRESS,
        callback_prefix=str(merchant["callbackPrefix"]),
        auth_token=str(merchant.get("authToken") or ""),
    )


def _amount_and_text(body: dict[str, Any]) -> tuple[int, str]:
    transaction = body.get("transaction")
    if not isinstance(transaction, dict):
        raise _invalid("transaction", "is required")
    amount = transaction.get("amount") or 0
    if not isinstance(amount, int) or isinstance(amount, bool) or 0 < amount < MIN_AMOUNT:
        raise _invalid("transaction.amount", f"must be 0 (all) or {MIN_AMOUNT} øre or more")
    if amount < 0:
        raise _invalid("transaction.amount", "must not be negative")
    return amount, _text(transaction)


def _text(transaction: dict[str, Any]) -> str:
    text = transaction.get("transactionText")
    if not isinstance(text, str) or len(text) > 100:
        raise _invalid("transaction.transactionText", "is required, at most 100 characters")
    return text


def _request_id(request: web.Request, *, required: bool) -> str:
    request_id = request.headers.get(REQUEST_ID, "")
    if len(request_id) > MAX_REQUEST_ID or (required and not request_id):
        detail = f"is required for a partial capture, at most {MAX_REQUEST_ID} characters"
        raise _invalid(REQUEST_ID, detail)
    return request_id


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise _invalid("body", "is not valid JSON") from None
    if not isinstance(body, dict):
        raise _invalid("body", "must be a JSON object")
    return body


def _invalid(field_name: str, problem: str) -> EcomError:
    """The guide: for InvalidRequest, "the field name will be the error code"."""
    return EcomError(400, "InvalidRequest", field_name, f"{field_name} {problem}")


async def _callback(orders: EcomOrders, order: EcomOrder) -> None:
    url = f"{order.callback_prefix.rstrip('/')}/v2/payments/{order.order_id}"
    headers = {"Content-Type": "application/json"}
    if order.auth_token:
        headers["Authorization"] = order.auth_token
    body = {
        "merchantSerialNumber": order.merchant_serial_number,
        "orderId": order.order_id,
        "transactionInfo": {
            "amount": order.amount,
            "status": "RESERVE" if order.express else "RESERVED",
            "timeStamp": utc_timestamp(),
            "transactionId": order.log[-1].transaction_id,
        },
    }
    orders.callbacks[order.order_id] = 0
    timeout = aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT)
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=orjson.dumps(body), headers=headers) as response,
        ):
            orders.callbacks[order.order_id] = response.status


async def _stop(app: web.Application) -> None:
    orders = app[ECOM_KEY]
    for timer in orders.timers:
        timer.cancel()
    for task in orders.tasks:
        task.cancel()
    await asyncio.gather(*orders.tasks, return_exceptions=True)
