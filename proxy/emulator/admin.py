"""The admin app: fault switches and introspection, served on a port of its own.

It is a separate application so that no route of it can be reached through a proxy
in front of the emulator. Routes:

- ``GET /faults``: the switches; ``PUT /faults``: set the fields of a JSON object
  (checked all first, then applied together); ``DELETE /faults``: all off.
- ``GET /stats``: token requests per style, payments, received API requests.
- ``GET /requests``: the received API requests, secret header values masked.
- ``POST /ecom/{orderId}/approve`` (``?msn=`` when two sales units use the orderId):
  the user approves the eCom order, which sends its callback.
"""

from collections.abc import Callable
from dataclasses import fields

from aiohttp import web

from .answers import problem
from .ecom import approve, find_order
from .ecomorders import EcomError
from .faults import API_FAULTS, TOKEN_FAULTS, Faults
from .keys import STATE_KEY, request_state
from .state import EmulatorState, masked


def create_admin_app(state: EmulatorState) -> web.Application:
    """The admin application for the emulator whose state is ``state``."""
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get("/faults", get_faults)
    app.router.add_put("/faults", put_faults)
    app.router.add_delete("/faults", delete_faults)
    app.router.add_get("/stats", get_stats)
    app.router.add_get("/requests", get_requests)
    app.router.add_post("/ecom/{order_id}/approve", approve_ecom_order)
    return app


async def get_faults(request: web.Request) -> web.StreamResponse:
    """The current fault switches."""
    return web.json_response(request_state(request).faults.as_json())


async def put_faults(request: web.Request) -> web.StreamResponse:
    """Set the fault fields given in a JSON object; answers the switches after."""
    faults = request_state(request).faults
    try:
        changes = checked_changes(await request.json())
    except ValueError as error:
        return problem(request, 400, "Bad Request", str(error))
    for name, value in changes.items():
        setattr(faults, name, value)
    return web.json_response(faults.as_json())


async def delete_faults(request: web.Request) -> web.StreamResponse:
    """Switch every fault off."""
    faults = request_state(request).faults
    faults.clear()
    return web.json_response(faults.as_json())


async def get_stats(request: web.Request) -> web.StreamResponse:
    """Counters: token requests per style, payments, received API requests."""
    state = request_state(request)
    return web.json_response(
        {
            "token_requests": state.token_requests,
            "payments": len(state.payments),
            "received_requests": state.received_total,
        }
    )


async def get_requests(request: web.Request) -> web.StreamResponse:
    """The received API requests, oldest first, with secret header values masked."""
    return web.json_response(
        [
            {
                "method": received.method,
                "raw_path": received.raw_path,
                "headers": [list(pair) for pair in masked(received.headers)],
                "body_length": received.body_length,
            }
            for received in request_state(request).received
        ]
    )


async def approve_ecom_order(request: web.Request) -> web.StreamResponse:
    """The user approves an eCom order: reserved, and its callback sent; its details."""
    orders = request_state(request).ecom
    order = find_order(orders, request.match_info["order_id"], request.query.get("msn"))
    if order is None:
        return problem(request, 404, "Not Found", "No single eCom order with this orderId.")
    try:
        approve(orders, order)
    except EcomError as error:
        return problem(request, 409, "Conflict", error.message)
    return web.json_response(order.details_json())


def checked_changes(body: object) -> dict[str, object]:
    """The fault fields in ``body``, each checked; ValueError names the first bad one."""
    if not isinstance(body, dict):
        raise ValueError("The body must be a JSON object of fault fields.")
    known = {spec.name for spec in fields(Faults)}
    for name, value in body.items():
        if name not in known:
            raise ValueError(f"{name}: unknown fault field; known: {sorted(known)}")
        if not FIELD_CHECKS[name](value):
            raise ValueError(f"{name}: {FIELD_RULES[name]}")
    return dict(body)


def _is_delay(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _is_count(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


def _is_lifetime(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


FIELD_CHECKS: dict[str, Callable[[object], bool]] = {
    "token": lambda value: value is None or value in TOKEN_FAULTS,
    "token_delay": _is_delay,
    "expires_in_override": _is_lifetime,
    "expires_in_text": lambda value: value is None or (isinstance(value, str) and len(value) < 64),
    "api": lambda value: value is None or value in API_FAULTS,
    "api_delay": _is_delay,
    "fail_count": _is_count,
}
FIELD_RULES = {
    "token": f"null or one of {sorted(TOKEN_FAULTS)}",
    "token_delay": "a number of seconds, 0 or more",
    "expires_in_override": "null or a whole number of seconds",
    "expires_in_text": "null or a short string",
    "api": f"null or one of {sorted(API_FAULTS)}",
    "api_delay": "a number of seconds, 0 or more",
    "fail_count": "null or a whole number above 0",
}
