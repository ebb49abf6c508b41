"""Recognising sales units by their credentials, and the API authentication rule.

Every comparison with a secret is constant-time (``hmac.compare_digest``) and walks all
units, and no secret is ever echoed or logged.
"""

import hmac
from collections.abc import Iterable

from aiohttp import web

from .answers import (
    EXPIRED_TOKEN,
    INVALID_SUBSCRIPTION_KEY,
    INVALID_TOKEN,
    MISSING_SUBSCRIPTION_KEY,
    MISSING_TOKEN,
    Rejection,
    apim_error,
    problem,
)
from .keys import request_state
from .settings import SalesUnit

SUBSCRIPTION_KEY = "Ocp-Apim-Subscription-Key"
MERCHANT_SERIAL_NUMBER = "Merchant-Serial-Number"


def same_secret(given: str, expected: str) -> bool:
    """Whether ``given`` equals ``expected``, in time independent of where they differ."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def unit_by_key(
    units: Iterable[SalesUnit], key: str | None, *, token_call: bool
) -> SalesUnit | None:
    """The unit whose subscription key (the token one for a token call) is ``key``."""
    found = None
    for unit in units:
        expected = unit.token_key if token_call else unit.subscription_key
        if key is not None and same_secret(key, expected):
            found = unit
    return found


def unit_by_client(
    units: Iterable[SalesUnit], client_id: str | None, client_secret: str | None
) -> SalesUnit | None:
    """The unit whose client id and secret are both the ones given."""
    found = None
    for unit in units:
        id_matches = client_id is not None and same_secret(client_id, unit.client_id)
        secret_matches = client_secret is not None and same_secret(
            client_secret, unit.client_secret
        )
        if id_matches and secret_matches:
            found = unit
    return found


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def require_subscription_key(request: web.Request) -> SalesUnit:
    """The unit of the request's API subscription key; else the gateway's 401."""
    units = request_state(request).settings.sales_units
    key = request.headers.get(SUBSCRIPTION_KEY)
    if key is None:
        raise Rejection(apim_error(401, MISSING_SUBSCRIPTION_KEY))
    unit = unit_by_key(units, key, token_call=False)
    if unit is None:
        raise Rejection(apim_error(401, INVALID_SUBSCRIPTION_KEY))
    return unit


def require_merchant(request: web.Request, unit: SalesUnit) -> None:
    """A ``Merchant-Serial-Number`` header, when present, must be the unit's: else 403."""
    msn = request.headers.get(MERCHANT_SERIAL_NUMBER)
    if msn is not None and msn != unit.merchant_serial_number:
        raise Rejection(
            problem(
                request,
                403,
                "Forbidden",
                "The Merchant-Serial-Number does not belong to this subscription key.",
            )
        )


def authenticate_api(request: web.Request) -> SalesUnit:
    """The API rule: a known subscription key, a live token of that unit, its MSN."""
    unit = require_subscription_key(request)
    token = bearer_token(request)
    if token is None:
        raise Rejection(apim_error(401, MISSING_TOKEN))
    state = request_state(request)
    owner = state.token_owner(token)
    if owner is None and token in state.tokens:
        raise Rejection(apim_error(401, EXPIRED_TOKEN))
    if owner is None or owner != unit:
        raise Rejection(apim_error(401, INVALID_TOKEN))
    require_merchant(request, unit)
    return unit
