"""Answers in the shapes Vipps MobilePay uses, and the exception that carries them.

- RFC 7807 problems (``application/problem+json``) from the APIs themselves,
- the Azure API Management gateway's ``{"statusCode", "message"}`` errors,
- `Rejection`, raised anywhere in a handler to end it with a ready answer.
"""

import secrets
from collections.abc import Mapping, Sequence

from aiohttp import web

PROBLEM_TYPE = "https://developer.vippsmobilepay.com/docs/knowledge-base/errors"
PROBLEM_CONTENT_TYPE = "application/problem+json"
INVALID_SUBSCRIPTION_KEY = (
    "Access denied due to invalid subscription key. "
    "Make sure to provide a valid key for an active subscription."
)
MISSING_SUBSCRIPTION_KEY = (
    "Access denied due to missing subscription key. "
    "Make sure to include subscription key when making requests to an API."
)
# The gateway's token refusals, as Vipps words them: a proxy reads these to tell a
# refused token (fetch a new one) from a refused key (a new token will not help).
INVALID_TOKEN = "Access denied due to invalid token"
MISSING_TOKEN = "Access denied due to missing token"
EXPIRED_TOKEN = "Access denied due to expired token"


class Rejection(Exception):
    """Ends request handling with ``response`` (answered by the app's middleware)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def trace_id() -> str:
    """A fresh id for tracing one error."""
    return secrets.token_hex(16)


def problem(
    request: web.Request,
    status: int,
    title: str,
    detail: str,
    *,
    extra_details: Sequence[Mapping[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An RFC 7807 problem answer, as the Vipps APIs send them."""
    body: dict[str, object] = {
        "type": PROBLEM_TYPE,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.path,
        "traceId": trace_id(),
    }
    if extra_details:
        body["extraDetails"] = [dict(item) for item in extra_details]
    return web.json_response(
        body, status=status, content_type=PROBLEM_CONTENT_TYPE, headers=headers
    )


def apim_error(status: int, message: str) -> web.Response:
    """An error from the API Management gateway in front of the APIs."""
    return web.json_response({"statusCode": status, "message": message}, status=status)
