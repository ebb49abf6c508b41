"""One token fetch: the request each token style asks with, and the answer read.

What a :class:`~proxy.tokens.TokenProvider` (the cache, its refresh and backoff) asks
of a token endpoint, once: ``fetch_token``. Its rules:

* the request carries what Vipps documents for the credential set's style and nothing
  else (``token_request``), and asks for the identity coding only;
* the answer is read whole (1 MiB at most); a non-200 is a failed fetch whose message
  is redacted before it is cut, and a 429 or 503 says, in its ``Retry-After``, when
  the endpoint wants the next fetch;
* the access token must be visible ASCII; the lifetime is ``expires_in`` (else
  ``expires_on`` less ``not_before``) and must be a finite number above zero, while
  fields the proxy does not use are never read: anything else is a failed fetch
  (:class:`TokenFetchError`), never a crash;
* a :class:`Token`'s expiry is taken a little early and its refresh is due at
  ``lifetime - max(60 s, 10 %)`` (at most half the lifetime), both on the monotonic
  clock from receipt (``token_times``).
"""

from __future__ import annotations

import base64
import contextlib
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Final

import aiohttp
import orjson

from proxy.config import Credentials
from proxy.redact import Redactor
from proxy.secret import Secret

MAX_LIFETIME: Final = 7 * 24 * 3600.0  # distrust absurd lifetimes; a 401 still refreshes
MIN_REFRESH_INTERVAL: Final = 1.0  # seconds between two fetches' starts, at least
MAX_ANSWER: Final = 1 << 20  # bytes of a token answer; a larger one is a failed fetch
MAX_ERROR_BODY: Final = 512
#: Statuses whose Retry-After says when the token endpoint wants the next fetch.
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
#: What an access token may be made of: visible ASCII (a JWT, RFC 6750's b64token), so
#: that it can never break or add to the header it is injected into.
TOKEN_SHAPE: Final = re.compile(r"[\x21-\x7e]+")


class TokenFetchError(Exception):
    """A token fetch failed; the message is safe to log (already redacted).

    ``retry_after``: seconds the endpoint asked us to wait (429/503 with Retry-After).
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` value (delay-seconds or an HTTP date, RFC 9110 §10.2.3)
    asks for, counted from ``now`` (wall clock); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 9110 dates are GMT all the same
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class Token:
    value: Secret
    received_at: float  # monotonic
    expires_at: float  # monotonic, a little early
    refresh_at: float  # monotonic

    def valid(self, now: float) -> bool:
        return now < self.expires_at


def token_times(lifetime: float, received_at: float) -> tuple[float, float]:
    """``(expires_at, refresh_at)`` for a token of ``lifetime`` seconds received now."""
    lifetime = min(lifetime, MAX_LIFETIME)
    safety = min(5.0, lifetime * 0.1)
    margin = min(max(60.0, lifetime * 0.1), lifetime / 2)
    refresh_in = max(lifetime - margin, MIN_REFRESH_INTERVAL)
    return received_at + lifetime - safety, received_at + refresh_in


def parse_token_response(body: bytes, received_at: float) -> Token:
    """A :class:`Token` from any of the three styles' JSON; numbers may be strings."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise TokenFetchError("token response is not JSON") from None
    if not isinstance(data, dict):
        raise TokenFetchError("token response is not a JSON object")
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenFetchError("token response has no access_token")
    if not TOKEN_SHAPE.fullmatch(access):
        raise TokenFetchError("token response has an access_token that is not visible ASCII")
    lifetime = _lifetime(data)
    expires_at, refresh_at = token_times(lifetime, received_at)
    return Token(Secret(access), received_at, expires_at, refresh_at)


def _lifetime(data: dict[str, Any]) -> float:
    """Seconds the token lives: ``expires_in`` when present, else ``expires_on`` less
    ``not_before`` (or now). Only the fields used are read: ``ext_expires_in`` (Vipps
    answers ``"0"``, "currently disabled"), ``resource`` and an ``expires_on`` from a
    clock that disagrees with ours never refuse a token; the lifetime used must be a
    finite number above zero."""
    lifetime = _as_number("expires_in", data.get("expires_in"))
    if lifetime is None:
        expires_on = _as_number("expires_on", data.get("expires_on"))
        if expires_on is None:
            raise TokenFetchError("token response has neither expires_in nor expires_on")
        not_before = _as_number("not_before", data.get("not_before"))
        lifetime = expires_on - (not_before if not_before is not None else time.time())
    if not lifetime > 0:
        raise TokenFetchError("token response has a lifetime of zero or less")
    return lifetime


def _as_number(name: str, value: Any) -> float | None:
    """A present lifetime field as a finite float; None when absent (or null)."""
    if value is None:
        return None
    number = math.nan
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        with contextlib.suppress(ValueError, OverflowError):
            number = float(value.strip() if isinstance(value, str) else value)
    if not math.isfinite(number):
        raise TokenFetchError(f"token response has a lifetime that is not a finite number ({name})")
    return number


#: Every token request: the session does not decode, so nothing but the identity
#: coding may be asked for (RFC 9110 §12.5.3).
IDENTITY: Final = {"Accept-Encoding": "identity"}


def token_request(creds: Credentials) -> dict[str, Any]:
    """Keyword arguments for ``session.post`` that ask ``creds``' endpoint for a token,
    with what Vipps documents for its style and nothing else."""
    if creds.token_style == "oauth2":
        # /miami/v1/token: "The Ocp-Apim-Subscription-Key is not used" (and is refused
        # with invalid_client): HTTP Basic and the form only.
        pair = f"{creds.client_id.reveal()}:{creds.client_secret.reveal()}".encode()
        basic = "Basic " + base64.b64encode(pair).decode("ascii")
        return {
            "data": {"grant_type": "client_credentials"},
            "headers": {**IDENTITY, "Authorization": basic},
        }
    key = creds.token_subscription_key or creds.subscription_key
    assert key is not None  # the config requires one for these styles
    if creds.token_style == "accesstoken":
        headers = {
            **IDENTITY,
            "client_id": creds.client_id.reveal(),
            "client_secret": creds.client_secret.reveal(),
            "Ocp-Apim-Subscription-Key": key.reveal(),
        }
        if creds.merchant_serial_number:
            headers["Merchant-Serial-Number"] = creds.merchant_serial_number
        headers.update(creds.system_headers)  # the Access Token guide's sample request
        return {"headers": headers, "data": b""}
    body = {
        "client_id": creds.client_id.reveal(),
        "client_secret": creds.client_secret.reveal(),
        "resource": creds.resource,
    }
    return {
        "headers": {
            **IDENTITY,
            "Ocp-Apim-Subscription-Key": key.reveal(),
            "Content-Type": "application/json",
        },
        "data": orjson.dumps(body),
    }


async def fetch_token(
    session: aiohttp.ClientSession,
    creds: Credentials,
    redactor: Redactor,
    *,
    ssl: Any,
    clock: Callable[[], float],
) -> Token:
    """One fetch from ``creds``' token endpoint over ``session``; a failure is a
    :class:`TokenFetchError` saying why, already redacted."""
    timeout = aiohttp.ClientTimeout(total=creds.token_timeout)
    try:
        async with session.post(
            creds.token_url,
            timeout=timeout,
            ssl=ssl,
            allow_redirects=False,
            **token_request(creds),
        ) as response:
            body = await _read_whole(response.content, MAX_ANSWER)
            received = clock()
            if response.status != 200:
                raise _refused(response.status, response.headers, body, redactor)
            return parse_token_response(body, received)
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        raise TokenFetchError(f"token endpoint unreachable: {exc.__class__.__name__}") from None


def _refused(
    status: int, headers: Mapping[str, str], body: bytes, redactor: Redactor
) -> TokenFetchError:
    """A failed fetch for a non-200 answer; a 429 or 503 says when to ask again."""
    asked = None
    if status in RETRY_AFTER_STATUSES:
        asked = retry_after_seconds(headers.get("Retry-After"), time.time())
    # Redact the whole body before cutting it: a cut through a secret would leave
    # a prefix that no longer matches, and the prefix would be logged.
    text = redactor.redact_text(body.decode("utf-8", "replace"))
    message = f"token endpoint answered {status}: {text[:MAX_ERROR_BODY]}"
    return TokenFetchError(message, retry_after=asked)


async def _read_whole(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, however it is cut on the wire; over ``limit`` bytes, an error."""
    body = bytearray()
    while chunk := await content.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            raise TokenFetchError(f"token response is larger than {limit >> 20} MiB")
    return bytes(body)
