"""The proxy's own errors, and the one place that turns them into responses.

::

    ProxyError                      problem+json with `status`
    ├── InternalError               500 a bug of ours (the log says where)
    ├── BadRequest                  400 malformed request
    ├── WebhookUnauthorized         401 a webhook whose signature does not verify
    ├── Forbidden                   403 client or merchant not allowed
    ├── NotFound                    404 no route
    ├── MethodNotAllowed            405 CONNECT, TRACE; not POST on a token path
    ├── ProxyAuthRequired           407 missing or wrong client key
    ├── RequestTimeout              408 a request body stalled past body_timeout
    ├── PayloadTooLarge             413 body above max_body_bytes
    ├── ExpectationFailed           417 an Expect other than 100-continue
    ├── HeadersTooLarge             431 header block too large in total
    ├── CodingNotImplemented        501 a request transfer coding other than chunked
    ├── VersionNotSupported         505 not HTTP/1.0 or HTTP/1.1
    ├── BadGateway                  502 upstream unreachable or broken
    ├── GatewayTimeout              504 upstream too slow
    └── RetryLater                  with Retry-After: when to ask again
        ├── TooManyCallbacks        429 an address past a callback hook's max_per_minute
        ├── TokenUnavailable        503 no token can be had
        ├── UpstreamBusy            503 no upstream connection free in time
        ├── StoreFull               503 a webhook path past its max_pending (60 s)
        └── StoreUnavailable        503 a webhook event could not be stored (1 s)

No message built here ever includes a secret: details are written by the proxy from
fixed phrases and non-secret values (paths, route names, numbers).
"""

from __future__ import annotations

import math
from typing import ClassVar

import orjson
from aiohttp import web

PROBLEM_JSON = "application/problem+json"


class ProxyError(Exception):
    """An error the proxy answers itself, as an RFC 9457 problem."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal proxy error"
    slug: ClassVar[str] = "internal-error"

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        #: A short machine-friendly cause for logs and metrics (`connect_timeout`, ...).
        self.reason = reason or self.slug.replace("-", "_")

    def extra_headers(self) -> dict[str, str]:
        """Headers this error adds to its response."""
        return {}


class InternalError(ProxyError):
    """A bug in the proxy; the log has the cause."""


class BadRequest(ProxyError):
    status = 400
    title = "Bad request"
    slug = "bad-request"


class Forbidden(ProxyError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(ProxyError):
    status = 404
    title = "No route"
    slug = "no-route"


class MethodNotAllowed(ProxyError):
    status = 405
    title = "Method not allowed"
    slug = "method-not-allowed"

    def __init__(
        self,
        detail: str,
        *,
        reason: str | None = None,
        allow: str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
    ) -> None:
        super().__init__(detail, reason=reason)
        self.allow = allow

    def extra_headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class HeadersTooLarge(ProxyError):
    status = 431
    title = "Request header fields too large"
    slug = "headers-too-large"


class VersionNotSupported(ProxyError):
    status = 505
    title = "HTTP version not supported"
    slug = "version-not-supported"


class RequestTimeout(ProxyError):
    status = 408
    title = "Request timeout"
    slug = "request-timeout"


class ProxyAuthRequired(ProxyError):
    status = 407
    title = "Proxy authentication required"
    slug = "proxy-auth-required"

    def extra_headers(self) -> dict[str, str]:
        return {"Proxy-Authenticate": 'Bearer realm="vipps-proxy"'}


class PayloadTooLarge(ProxyError):
    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class ExpectationFailed(ProxyError):
    status = 417
    title = "Expectation failed"
    slug = "expectation-failed"


class CodingNotImplemented(ProxyError):
    status = 501
    title = "Not implemented"
    slug = "not-implemented"


class BadGateway(ProxyError):
    status = 502
    title = "Bad gateway"
    slug = "bad-gateway"


class RetryLater(ProxyError):
    """An error whose answer says when to ask again: ``Retry-After``, in whole seconds
    (at least 1), from ``retry_after`` (given, or the class's own)."""

    retry_after: float = 1.0

    def __init__(
        self, detail: str, *, retry_after: float | None = None, reason: str | None = None
    ) -> None:
        super().__init__(detail, reason=reason)
        if retry_after is not None:
            self.retry_after = retry_after

    def extra_headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class TokenUnavailable(RetryLater):
    status = 503
    title = "No access token available"
    slug = "token-unavailable"


class UpstreamBusy(RetryLater):
    status = 503
    title = "Upstream busy"
    slug = "upstream-busy"


class GatewayTimeout(ProxyError):
    status = 504
    title = "Gateway timeout"
    slug = "gateway-timeout"


class WebhookUnauthorized(ProxyError):
    status = 401
    title = "Webhook not authenticated"
    slug = "webhook-unauthorized"


class TooManyCallbacks(RetryLater):
    status = 429
    title = "Too many callbacks from this address"
    slug = "over-max-per-minute"


class StoreFull(RetryLater):
    status = 503
    title = "Too many events waiting"
    slug = "over-max-pending"
    retry_after = 60.0


class StoreUnavailable(RetryLater):
    status = 503
    title = "Event store unavailable"
    slug = "store-unavailable"
    retry_after = 1.0


def problem_response(error: ProxyError, request_id: str) -> web.Response:
    """The problem+json response for ``error``."""
    body = {
        "type": f"https://github.com/vipps-proxy/vipps-proxy#{error.slug}",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "request_id": request_id,
    }
    response = web.Response(status=error.status, body=orjson.dumps(body), content_type=PROBLEM_JSON)
    response.headers.update(error.extra_headers())
    return response
