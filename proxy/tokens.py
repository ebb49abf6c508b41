"""Access tokens: fetched with client credentials, cached in memory, refreshed early.

One :class:`TokenProvider` per credential set. Its rules:

* one fetch at a time, shared by every request waiting for it;
* refreshed in the background at ``lifetime - max(60 s, 10 %)`` (at most half the
  lifetime), timed on the monotonic clock from receipt, so requests never wait for a
  refresh while the old token is valid and a skewed wall clock changes nothing;
* never handed out once expired (expiry is also taken a little early);
* failed fetches retried with exponential backoff and jitter, capped so that a held
  token is retried well before it expires and, with no token, every 5 s at most;
  while no valid token exists callers get :class:`~proxy.errors.TokenUnavailable`
  with a Retry-After;
* at most one fetch a second per credential set, whatever the endpoint answers: a
  fetch asked for sooner starts when the second is up;
* a token is checked at the moment it is handed out, one just fetched included: a
  token that lived less than its fetch took is never sent (503 with Retry-After);
* the answer is read whole (1 MiB at most); the lifetime is ``expires_in`` (else
  ``expires_on`` less ``not_before``) and must be a finite number above zero, while
  fields the proxy does not use are never read: anything else is a failed fetch,
  never a crash;
* :meth:`TokenProvider.invalidate` drops a token Vipps refused, if still current.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Final

import aiohttp
import orjson
import structlog

from proxy import events
from proxy.config import Credentials
from proxy.errors import TokenUnavailable
from proxy.metrics import Metrics
from proxy.redact import Redactor
from proxy.secret import Secret

MAX_LIFETIME: Final = 7 * 24 * 3600.0  # distrust absurd lifetimes; a 401 still refreshes
MIN_REFRESH_INTERVAL: Final = 1.0  # seconds between two fetches' starts, at least
MAX_ANSWER: Final = 1 << 20  # bytes of a token answer; a larger one is a failed fetch
MAX_ERROR_BODY: Final = 512
NO_TOKEN_RETRY_CAP: Final = 5.0  # seconds between fetch attempts while calls get 503
MIN_RETRY: Final = 0.1
MIN_AGE_TO_INVALIDATE: Final = 1.0  # seconds; bounds 401-driven fetches to one a second
MAX_RETRY_AFTER: Final = 300.0  # seconds; the longest a token endpoint's Retry-After holds us
#: Statuses whose Retry-After says when the token endpoint wants the next fetch.
RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
#: What an access token may be made of: visible ASCII (a JWT, RFC 6750's b64token), so
#: that it can never break or add to the header it is injected into.
TOKEN_SHAPE: Final = re.compile(r"[\x21-\x7e]+")


#: What a 401 from Vipps is about, from its body and ``WWW-Authenticate``: only
#: ``TOKEN_REFUSED`` makes a fresh token worth fetching; the others are log reasons.
TOKEN_REFUSED: Final = "token"
KEY_REFUSED: Final = "upstream_rejected_subscription_key"
OTHER_REFUSAL: Final = "upstream_unauthorized"
MAX_REFUSAL_BODY: Final = 8 * 1024  # bytes of a 401 read to tell; gateway bodies are small
_TOKEN_WORDS: Final = (b"invalid", b"missing", b"expired")
#: Vipps' common-errors FAQ: a 401 saying this "normally indicates that the provided
#: Authorization header (the access token) is invalid".
_TOKEN_MESSAGE: Final = b"something went wrong, please try again later"


def refusal_cause(raw_headers: Iterable[tuple[bytes, bytes]], body: bytes) -> str:
    """Why Vipps answered 401: its gateway says "invalid token", "missing token",
    "expired" or ``Bearer error="invalid_token"`` for a token, and "invalid (or missing)
    subscription key" (or "Subscription not found") for the key, and "Something went
    wrong, please try again later" for an invalid token (Vipps' common-errors FAQ);
    anything else is just unauthorized."""
    for name, value in raw_headers:
        if name.lower() == b"www-authenticate" and b"invalid_token" in value.lower():
            return TOKEN_REFUSED
    text = body.lower()
    if b"subscription" in text:
        return KEY_REFUSED
    if b"expired" in text or (b"token" in text and any(w in text for w in _TOKEN_WORDS)):
        return TOKEN_REFUSED
    if _TOKEN_MESSAGE in text:
        return TOKEN_REFUSED
    return OTHER_REFUSAL


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


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits up to ``min(cap, base * 2**n)``."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(attempt, 30))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not crypto


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


class TokenProvider:
    """The token cache of one credential set."""

    def __init__(
        self,
        creds: Credentials,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        redactor: Redactor,
        *,
        backoff: Backoff = Backoff(),
        ssl: Any = True,
        insecure: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.creds = creds
        self._session = session
        self._metrics = metrics
        self._redactor = redactor
        self._backoff = backoff
        self._ssl = ssl
        self._insecure = insecure
        self._clock = clock
        self._log = structlog.get_logger("proxy.tokens").bind(credentials=creds.name)
        self._token: Token | None = None
        self._fetch: asyncio.Task[Token] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._next_fetch_at = -math.inf  # no fetch starts before this (monotonic)
        self._held_until = -math.inf  # the endpoint's Retry-After: no fetch before this
        self._closed = False

    # ------------------------------------------------------------------ for requests

    def current(self) -> Token | None:
        """The token if it is still valid, else None."""
        token = self._token
        return token if token is not None and token.valid(self._clock()) else None

    async def get(self) -> tuple[Token, bool]:
        """A valid token and whether this call waited for a fetch."""
        token = self.current()
        if token is not None:
            return token, False
        now = self._clock()
        if self._fetch is None and now < self._retry_at:
            raise self._unavailable(self._retry_at - now)
        fetch = self._start_fetch()
        try:
            token = await asyncio.shield(fetch)
        except TokenFetchError:
            raise self._unavailable(max(self._retry_at - self._clock(), 1.0)) from None
        if not token.valid(self._clock()):  # it lived less than its fetch took
            raise self._unavailable(max(self._next_fetch_at - self._clock(), 1.0))
        return token, True

    def invalidate(self, token: Token) -> bool:
        """Vipps refused ``token``: drop it if still ours; True if a fresh one may help.

        A token younger than ``MIN_AGE_TO_INVALIDATE`` is kept: Vipps refusing a token
        it has just issued means the call is wrong, not the token, and dropping it would
        let every such call cost a token fetch.
        """
        if self._token is not token:
            return True  # already replaced: the caller's replay gets the newer one
        now = self._clock()
        if now - token.received_at < MIN_AGE_TO_INVALIDATE:
            return False
        self._token = None
        if now >= self._held_until:  # else the endpoint asked to wait: the timer fetches
            self._retry_at = 0.0
            self._start_fetch()
        return True

    def use_tls(self, ssl: Any) -> None:
        """Fetch over ``ssl`` from now on (a reload changed the outbound TLS settings)."""
        self._ssl = ssl

    def can_serve(self) -> bool:
        """True while a valid token is held or the endpoint is not known to be failing."""
        return self.current() is not None or self._failures == 0

    async def fetch_once(self) -> Token:
        """One fetch, outside the cache and its retries (``check --online``); a failure
        is a ``TokenFetchError`` saying why, already redacted."""
        return await self._fetch_once()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Fetch a token in the background now, so the first call does not wait."""
        self._start_fetch()

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._fetch is not None:
            self._fetch.cancel()
            await asyncio.gather(self._fetch, return_exceptions=True)

    # ------------------------------------------------------------------ internals

    def _unavailable(self, retry_after: float) -> TokenUnavailable:
        return TokenUnavailable(
            f"no access token for credential set {self.creds.name!r}; the token endpoint "
            "is failing, retrying in the background",
            retry_after=retry_after,
        )

    def _start_fetch(self) -> asyncio.Task[Token]:
        """The fetch under way, or a new one: at once, or when the last one is a
        second old (fetches per credential set stay at one a second, whatever the
        endpoint says). Its failure is always retrieved, awaited or not."""
        if self._fetch is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            now = self._clock()
            wait = max(0.0, self._next_fetch_at - now)
            self._next_fetch_at = now + wait + MIN_REFRESH_INTERVAL
            self._fetch = asyncio.get_running_loop().create_task(self._run_fetch(wait))
            self._fetch.add_done_callback(_consume_result)
        return self._fetch

    async def _run_fetch(self, wait: float) -> Token:
        try:
            if wait > 0:
                await asyncio.sleep(wait)
            token = await self._fetch_once()
        except TokenFetchError as exc:
            self._on_failure(exc)
            raise
        finally:
            self._fetch = None
        self._on_success(token)
        return token

    def _on_success(self, token: Token) -> None:
        self._token = token
        self._failures = 0
        self._retry_at = 0.0
        self._redactor.add(token.value.reveal())
        self._metrics.token_fetch(self.creds.name, "ok")
        self._schedule(token.refresh_at)
        lifetime = round(token.expires_at - token.received_at)
        self._log.info(events.TOKEN_FETCHED, valid_for_s=lifetime)

    def _on_failure(self, exc: TokenFetchError) -> None:
        now = self._clock()
        delay = max(self._retry_delay(exc.retry_after), self._next_fetch_at - now)
        self._failures += 1
        self._retry_at = now + delay
        if exc.retry_after is not None:
            self._held_until = self._retry_at
        self._metrics.token_fetch(self.creds.name, "error")
        token = self.current()
        self._log.warning(
            events.TOKEN_REFRESH_FAILED,
            error=str(exc),
            attempt=self._failures,
            retry_in_s=round(delay, 3),
            holding_valid_token=token is not None,
            token_valid_for_s=round(token.expires_at - self._clock(), 3) if token else 0,
        )
        self._schedule(self._retry_at)

    def _retry_delay(self, asked: float | None) -> float:
        """The endpoint's Retry-After (``asked``) up to 300 s, else backoff, short while
        there is no token at all: clients get 503s until the next attempt. Either way
        never so long that a held token expires first. (Never sooner than a second
        after the last attempt began, though.)"""
        token = self.current()
        if asked is not None:
            delay = min(asked, MAX_RETRY_AFTER)
        else:
            delay = self._backoff.delay(self._failures)
            if token is None:
                return min(delay, NO_TOKEN_RETRY_CAP)
        if token is None:
            return delay
        return min(delay, max(MIN_RETRY, (token.expires_at - self._clock()) / 2))

    def _schedule(self, at: float) -> None:
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, at - self._clock())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed and self._fetch is None:
            # A background refresh: nobody awaits it, so its failure is only logged.
            self._start_fetch()

    async def _fetch_once(self) -> Token:
        if self._insecure:
            self._log.warning(events.TLS_VERIFY_DISABLED, url=str(self.creds.token_url))
        timeout = aiohttp.ClientTimeout(total=self.creds.token_timeout)
        try:
            async with self._session.post(
                self.creds.token_url,
                timeout=timeout,
                ssl=self._ssl,
                allow_redirects=False,
                **token_request(self.creds),
            ) as response:
                body = await _read_whole(response.content, MAX_ANSWER)
                received = self._clock()
                if response.status != 200:
                    raise self._refused(response.status, response.headers, body)
                return parse_token_response(body, received)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise TokenFetchError(f"token endpoint unreachable: {exc.__class__.__name__}") from None

    def _refused(self, status: int, headers: Mapping[str, str], body: bytes) -> TokenFetchError:
        """A failed fetch for a non-200 answer; a 429 or 503 says when to ask again."""
        asked = None
        if status in RETRY_AFTER_STATUSES:
            asked = retry_after_seconds(headers.get("Retry-After"), time.time())
        return TokenFetchError(self._describe_error(status, body), retry_after=asked)

    def _describe_error(self, status: int, body: bytes) -> str:
        # Redact the whole body before cutting it: a cut through a secret would leave
        # a prefix that no longer matches, and the prefix would be logged.
        text = self._redactor.redact_text(body.decode("utf-8", "replace"))
        return f"token endpoint answered {status}: {text[:MAX_ERROR_BODY]}"


async def _read_whole(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, however it is cut on the wire; over ``limit`` bytes, an error."""
    body = bytearray()
    while chunk := await content.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            raise TokenFetchError(f"token response is larger than {limit >> 20} MiB")
    return bytes(body)


def _consume_result(task: asyncio.Task[Token]) -> None:
    if not task.cancelled():
        task.exception()
