"""eCom v2 (``/ecomm/v2/payments``), just enough to send its callbacks.

Initiating a payment whose ``merchantInfo`` has a ``callbackPrefix`` makes the
emulator POST the reservation to ``{callbackPrefix}/v2/payments/{orderId}`` with the
merchant's ``authToken`` as ``Authorization``, once, as eCom does (it never retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web

from .answers import Rejection, problem
from .credentials import authenticate_api
from .payments import utc_timestamp

ECOM_PATH: Final = "/ecomm/v2/payments"
CALLBACK_TIMEOUT: Final = 3.0  # eCom waits this long for the merchant's answer


@dataclass
class EcomOrders:
    """eCom orders by id, the callbacks sent (status per order), tasks in flight."""

    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    callbacks: dict[str, int] = field(default_factory=dict)  # orderId -> status (0: failed)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


ECOM_KEY: Final = web.AppKey("vipps_emulator_ecom", EcomOrders)


def add_ecom_routes(app: web.Application) -> None:
    app[ECOM_KEY] = EcomOrders()
    app.router.add_post(ECOM_PATH, initiate)
    app.router.add_get(ECOM_PATH + "/{order_id}/details", details)
    app.on_cleanup.append(_stop)


async def initiate(request: web.Request) -> web.Response:
    """``POST /ecomm/v2/payments``: reserved at once; the callback follows."""
    unit = authenticate_api(request)
    try:
        doc = orjson.loads(await request.read())
        merchant, transaction = doc["merchantInfo"], doc["transaction"]
        order_id, amount = str(transaction["orderId"]), int(transaction["amount"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        detail = "merchantInfo and transaction.orderId/amount are required"
        raise Rejection(problem(request, 400, "Bad Request", detail)) from None
    orders = request.config_dict[ECOM_KEY]
    if order_id in orders.orders:
        raise Rejection(problem(request, 400, "Bad Request", "Duplicate orderId"))
    order = {
        "merchantSerialNumber": unit.merchant_serial_number,
        "orderId": order_id,
        "transactionInfo": {
            "amount": amount,
            "status": "RESERVE",
            "timeStamp": utc_timestamp(),
            "transactionId": str(secrets.randbelow(10**10)),
        },
    }
    orders.orders[order_id] = order
    prefix = str(merchant.get("callbackPrefix", ""))
    if prefix:
        token = str(merchant.get("authToken", ""))
        task = asyncio.create_task(_callback(orders, prefix, token, order))
        orders.tasks.add(task)
        task.add_done_callback(orders.tasks.discard)
    url = f"https://api.vipps.no/dwo-api-application/v1/deeplink/vippsgateway?v=2&token={order_id}"
    return web.json_response({"orderId": order_id, "url": url})


async def details(request: web.Request) -> web.Response:
    authenticate_api(request)
    order = request.config_dict[ECOM_KEY].orders.get(request.match_info["order_id"])
    if order is None:
        raise Rejection(problem(request, 404, "Not Found", "No order with this id."))
    return web.json_response(order)


async def _callback(orders: EcomOrders, prefix: str, token: str, order: dict[str, Any]) -> None:
    url = f"{prefix.rstrip('/')}/v2/payments/{order['orderId']}"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    orders.callbacks[order["orderId"]] = 0
    timeout = aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT)
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=orjson.dumps(order), headers=headers) as response,
        ):
            orders.callbacks[order["orderId"]] = response.status


async def _stop(app: web.Application) -> None:
    orders = app[ECOM_KEY]
    for task in orders.tasks:
        task.cancel()
    await asyncio.gather(*orders.tasks, return_exceptions=True)
