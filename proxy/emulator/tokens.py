"""The three token endpoints, in their three request styles.

- ``POST /accesstoken/get``: credentials in headers; seven fields, strings by default,
  in the Access Token 0.1.1 document's shape (``"ext_expires_in": "0"``).
- ``POST /api/access-token/jwt-token``: the older API, credentials in a JSON body.
- ``POST /miami/v1/token``: OAuth 2 client credentials with HTTP Basic.

Every request counts in ``EmulatorState.token_requests``, token faults apply before
anything else, and neither answers nor logs ever contain a secret or a token.
"""

import asyncio
import base64
import math
import time
import uuid
from datetime import UTC, datetime

import structlog
from aiohttp import web

from .answers import INVALID_SUBSCRIPTION_KEY, Rejection, apim_error
from .credentials import SUBSCRIPTION_KEY, unit_by_client, unit_by_key
from .faults import Faults
from .injection import FAULT_INJECTED, drop_connection
from .keys import FAULTED_KEY, request_state
from .settings import SalesUnit
from .state import EmulatorState, TokenStyle

ACCESSTOKEN_PATH = "/accesstoken/get"
JWT_TOKEN_PATH = "/api/access-token/jwt-token"
OAUTH2_PATH = "/miami/v1/token"
TOKEN_PATHS = frozenset({ACCESSTOKEN_PATH, JWT_TOKEN_PATH, OAUTH2_PATH})

TOKEN_ISSUED = "emulator_token_issued"
BROKEN_JSON = '{"token_type": "Bearer", "expires_in": "3600", "access_token": "eyJ0eXAiOiJKV1Qi'
ERROR_PAGE = "<html><body><h1>500 Internal Server Error</h1></body></html>"

logger = structlog.get_logger(__name__)


async def accesstoken_get(request: web.Request) -> web.StreamResponse:
    """``POST /accesstoken/get``: ``client_id``/``client_secret`` headers, no body."""
    faults = _count(request, "accesstoken")
    if (early := await _act_out(request, faults)) is not None:
        return early
    unit = _unit_by_token_key(request)
    _require_client(unit, request.headers.get("client_id"), request.headers.get("client_secret"))
    return await _send(
        request, _azure_answer(request_state(request), unit, faults, "accesstoken"), faults
    )


async def jwt_token(request: web.Request) -> web.StreamResponse:
    """``POST /api/access-token/jwt-token``: ``{"client_id","client_secret","resource"}``."""
    faults = _count(request, "jwt-token")
    if (early := await _act_out(request, faults)) is not None:
        return early
    unit = _unit_by_token_key(request)
    client_id, client_secret, resource = await _jwt_credentials(request)
    if resource != request_state(request).settings.resource:
        raise Rejection(
            _azure_error(400, "invalid_resource", 500011, "The resource principal was not found.")
        )
    _require_client(unit, client_id, client_secret)
    return await _send(
        request, _azure_answer(request_state(request), unit, faults, "jwt-token"), faults
    )


async def oauth2_token(request: web.Request) -> web.StreamResponse:
    """``POST /miami/v1/token``: HTTP Basic, form ``grant_type=client_credentials``."""
    faults = _count(request, "oauth2")
    if (early := await _act_out(request, faults)) is not None:
        return early
    state = request_state(request)
    unit = unit_by_client(state.settings.sales_units, *_basic_credentials(request))
    if unit is None:
        raise Rejection(_oauth_error(401, "invalid_client", "Client authentication failed."))
    grant_type = (await request.post()).get("grant_type")
    if grant_type != "client_credentials":
        error = "invalid_request" if grant_type is None else "unsupported_grant_type"
        raise Rejection(
            _oauth_error(400, error, "Only grant_type=client_credentials is supported.")
        )
    token, lifetime = _issue(state, unit, faults, "oauth2")
    body: dict[str, object] = {"token_type": "Bearer", "expires_in": lifetime, "scope": "api"}
    if faults is not None and faults.expires_in_text:
        body["expires_in"] = faults.expires_in_text
    if token is not None:
        body = {"access_token": token, **body}
    return await _send(request, web.json_response(body), faults)


def _count(request: web.Request, style: TokenStyle) -> Faults | None:
    state = request_state(request)
    state.token_requests[style] += 1
    faults = state.faults.take_token()
    if faults is not None:
        request[FAULTED_KEY] = True
    return faults


async def _act_out(request: web.Request, faults: Faults | None) -> web.StreamResponse | None:
    """The answer a token fault forces, or None to go on (after any delay)."""
    if faults is None or faults.token is None:
        return None
    logger.info(FAULT_INJECTED, fault=faults.token, path=request.path)
    match faults.token:
        case "down":
            return drop_connection(request, abort=False)
        case "slow":
            await asyncio.sleep(faults.token_delay)
        case "error500":
            return web.Response(status=500, text=ERROR_PAGE, content_type="text/html")
        case "invalid_json":
            return web.Response(text=BROKEN_JSON, content_type="application/json")
        case "missing_fields" | "split_answer":
            pass  # answered normally, less the token or in two pieces: see _issue, _send
    return None


def _unit_by_token_key(request: web.Request) -> SalesUnit:
    units = request_state(request).settings.sales_units
    unit = unit_by_key(units, request.headers.get(SUBSCRIPTION_KEY), token_call=True)
    if unit is None:
        raise Rejection(apim_error(401, INVALID_SUBSCRIPTION_KEY))
    return unit


def _require_client(unit: SalesUnit, client_id: str | None, client_secret: str | None) -> None:
    if unit_by_client((unit,), client_id, client_secret) is None:
        raise Rejection(
            _azure_error(
                401,
                "unauthorized_client",
                700016,
                "Application with the given identifier was not found in the directory, "
                "or its client secret is invalid.",
            )
        )


async def _jwt_credentials(request: web.Request) -> tuple[str, str, str]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    names = ("client_id", "client_secret", "resource")
    if not isinstance(body, dict) or not all(isinstance(body.get(n), str) for n in names):
        raise Rejection(
            _azure_error(
                400,
                "invalid_request",
                900144,
                "The request body must be a JSON object with the strings "
                "'client_id', 'client_secret' and 'resource'.",
            )
        )
    return body["client_id"], body["client_secret"], body["resource"]


def _basic_credentials(request: web.Request) -> tuple[str | None, str | None]:
    """The id and secret of ``Authorization: Basic``; (None, None) if absent or malformed.

    Parsed here because aiohttp 3.14 deprecates ``BasicAuth``.
    """
    scheme, _, encoded = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None, None
    client_id, colon, client_secret = decoded.partition(":")
    return (client_id, client_secret) if colon else (None, None)


def _issue(
    state: EmulatorState, unit: SalesUnit, faults: Faults | None, style: TokenStyle
) -> tuple[str | None, int]:
    """A token and its whole-second lifetime; no token under "missing_fields"."""
    lifetime = state.settings.token_lifetime
    if faults is not None and faults.expires_in_override is not None:
        lifetime = faults.expires_in_override
    if faults is not None and faults.expires_in_text:
        lifetime = _text_lifetime(faults.expires_in_text, lifetime)
    if faults is not None and faults.token == "missing_fields":
        return None, int(lifetime)
    token = state.issue_token(unit, lifetime)
    logger.info(
        TOKEN_ISSUED,
        style=style,
        merchant_serial_number=unit.merchant_serial_number,
        expires_in=int(lifetime),
    )
    return token, int(lifetime)


def _text_lifetime(text: str, default: float) -> float:
    """The lifetime ``expires_in_text`` gives a token: its value if finite and positive."""
    try:
        value = float(text)
    except ValueError:
        return default
    return value if math.isfinite(value) and value > 0 else default


def _azure_answer(
    state: EmulatorState, unit: SalesUnit, faults: Faults | None, style: TokenStyle
) -> web.Response:
    token, lifetime = _issue(state, unit, faults, style)
    now = int(time.time())
    numbers = {
        "expires_in": lifetime,
        "ext_expires_in": 0,  # "currently disabled": Vipps answers "0" (Access Token 0.1.1)
        "expires_on": now + lifetime,
        "not_before": now,
    }
    as_number = state.settings.expires_in_as_number
    body: dict[str, object] = {"token_type": "Bearer"}
    body.update({name: value if as_number else str(value) for name, value in numbers.items()})
    if faults is not None and faults.expires_in_text:
        body["expires_in"] = body["ext_expires_in"] = faults.expires_in_text
    body["resource"] = state.settings.resource
    if token is not None:
        body["access_token"] = token
    return web.json_response(body)


async def _send(
    request: web.Request, response: web.Response, faults: Faults | None
) -> web.StreamResponse:
    """``response`` as it is, or under "split_answer" in two pieces ``token_delay`` apart."""
    if faults is None or faults.token != "split_answer" or not isinstance(response.body, bytes):
        return response
    body = response.body
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    await asyncio.sleep(faults.token_delay)
    await stream.write(body[len(body) // 2 :])
    await stream.write_eof()
    return stream


def _azure_error(status: int, error: str, code: int, description: str) -> web.Response:
    """An Azure AD error; it names no client id and never a secret."""
    trace = str(uuid.uuid4())
    return web.json_response(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}",
            "error_codes": [code],
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            "trace_id": trace,
            "correlation_id": str(uuid.uuid4()),
        },
        status=status,
    )


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="vipps"'} if status == 401 else None
    return web.json_response(
        {"error": error, "error_description": description}, status=status, headers=headers
    )
