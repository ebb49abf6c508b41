"""The emulator application: routes and the two middlewares around them.

- ``record_requests`` remembers every request except token calls in the state.
- ``answer_rejections`` turns a raised `Rejection` (or eCom's `EcomError`) into its
  answer, and aiohttp's own 404/405 into problems, after the API authentication rule:
  like the real gateway, the emulator checks credentials before it says that a path
  does not exist.
"""

import os
import re

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import checkout, echo, ecom, epayment, login, tokens, webhooks
from .answers import Rejection, problem
from .credentials import authenticate_api
from .ecomorders import EcomError
from .injection import Handler, with_api_faults
from .keys import STATE_KEY, request_state
from .settings import DEFAULT_SETTINGS, EmulatorSettings
from .state import EmulatorState, ReceivedRequest

SPECS_ENV = "VIPPS_EMULATOR_CHECK_SPECS"  # a folder of OpenAPI files: see speccheck

PAYMENT = epayment.PAYMENTS_PATH + "/{reference}"


def create_emulator(settings: EmulatorSettings = DEFAULT_SETTINGS) -> web.Application:
    """A fresh emulator application with its own state."""
    middlewares: list[Middleware] = [record_requests, webhooks.notify_changes, answer_rejections]
    if os.environ.get(SPECS_ENV):
        from .speccheck import spec_check_middleware  # dev dependencies: only when asked

        middlewares.insert(1, spec_check_middleware())
    app = web.Application(middlewares=middlewares)
    app[STATE_KEY] = EmulatorState(settings)
    webhooks.add_webhook_routes(app)
    ecom.add_ecom_routes(app)
    add_token_routes(app.router)
    add_epayment_routes(app.router)
    add_other_api_routes(app.router)
    add_diagnostic_routes(app.router)
    return app


def add_token_routes(router: web.UrlDispatcher) -> None:
    """The three token endpoints, in any case: Vipps' gateway serves /accessToken/get."""
    router.add_post(_any_case(tokens.ACCESSTOKEN_PATH), tokens.accesstoken_get)
    router.add_post(_any_case(tokens.JWT_TOKEN_PATH), tokens.jwt_token)
    router.add_post(_any_case(tokens.OAUTH2_PATH), tokens.oauth2_token)


def _any_case(path: str) -> str:
    """A route pattern matching ``path`` whatever the case of its letters."""
    return "/{path:(?i:" + re.escape(path.removeprefix("/")) + ")}"


def add_epayment_routes(router: web.UrlDispatcher) -> None:
    """ePayment v1, every route subject to the API faults."""
    routes: list[tuple[str, str, Handler]] = [
        ("POST", epayment.PAYMENTS_PATH, epayment.create_payment),
        ("GET", PAYMENT, epayment.get_payment),
        ("GET", PAYMENT + "/events", epayment.get_events),
        ("POST", PAYMENT + "/capture", epayment.capture_payment),
        ("POST", PAYMENT + "/cancel", epayment.cancel_payment),
        ("POST", PAYMENT + "/refund", epayment.refund_payment),
        ("POST", "/epayment/v1/test/payments/{reference}/approve", epayment.approve_payment),
        ("POST", PAYMENT + "/approve", epayment.approve_payment),
    ]
    for method, path, handler in routes:
        router.add_route(method, path, with_api_faults(handler))


def add_other_api_routes(router: web.UrlDispatcher) -> None:
    """Checkout v3 and Login: no API faults here."""
    router.add_post(checkout.SESSION_PATH, checkout.create_session)
    router.add_get(checkout.SESSION_PATH + "/{reference}", checkout.get_session)
    router.add_get(
        login.LOGIN_PREFIX + "/.well-known/openid-configuration", login.openid_configuration
    )
    router.add_get(login.USERINFO_PATH, login.userinfo)
    router.add_get(login.USERINFO_PATH + "/{sub}", login.userinfo)


def add_diagnostic_routes(router: web.UrlDispatcher) -> None:
    """Echo, download, status and slow, subject to the API faults."""
    router.add_route("*", "/echo/{tail:.*}", with_api_faults(echo.echo))
    router.add_get(r"/download/{n:\d+}", with_api_faults(echo.download))
    router.add_get(r"/status/{code:\d{3}}", with_api_faults(echo.status))
    router.add_get(r"/slow/{seconds:\d+(\.\d+)?}", with_api_faults(echo.slow))


@web.middleware
async def record_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Remember each API request as it arrived; its body length once it is answered."""
    if request.path.lower() in tokens.TOKEN_PATHS:
        return await handler(request)
    received = ReceivedRequest(request.method, request.raw_path, echo.raw_headers(request))
    request_state(request).record(received)
    try:
        return await handler(request)
    finally:
        received.body_length = request.content.total_bytes


@web.middleware
async def answer_rejections(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`Rejection` → its answer; router 404/405 → a problem, once credentials pass."""
    try:
        return await handler(request)
    except Rejection as rejection:
        return rejection.response
    except EcomError as error:
        return ecom.error_answer(error)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as missing:
        try:
            authenticate_api(request)
        except Rejection as rejection:
            return rejection.response
        allow = {"Allow": missing.headers["Allow"]} if "Allow" in missing.headers else None
        return problem(
            request, missing.status, missing.reason, "No such API operation.", headers=allow
        )
