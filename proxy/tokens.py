"""Access tokens: fetched with client credentials, cached in memory, refreshed early.

One :class:`TokenProvider` per credential set; one fetch (the request and how its
answer is read) is :func:`proxy.tokenfetch.fetch_token`. The provider's rules:

* one fetch at a time, shared by every request waiting for it;
* refreshed in the background when the token's refresh is due (``token_times``),
  timed on the monotonic clock from receipt, so requests never wait for a refresh
  while the old token is valid and a skewed wall clock changes nothing;
* never handed out once expired (expiry is also taken a little early);
* failed fetches retried with exponential backoff and jitter, capped so that a held
  token is retried well before it expires and, with no token, every 5 s at most; a
  token endpoint's ``Retry-After`` holds the next fetch back (up to 300 s);
  while no valid token exists callers get :class:`~proxy.errors.TokenUnavailable`
  with a Retry-After;
* at most one fetch a second per credential set, whatever the endpoint answers: a
  fetch asked for sooner starts when the second is up;
* a token is checked at the moment it is handed out, one just fetched included: a
  token that lived less than its fetch took is never sent (503 with Retry-After);
* :meth:`TokenProvider.invalidate` drops a token Vipps refused, if still current;
  ``refusal_cause`` tells a refused token from the other causes of a 401.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import structlog

from proxy import events
from proxy.config import Credentials
from proxy.errors import TokenUnavailable
from proxy.metrics import Metrics
from proxy.redact import Redactor
from proxy.tokenfetch import MIN_REFRESH_INTERVAL, Token, TokenFetchError, fetch_token

if TYPE_CHECKING:  # loaded only when [tracing] is on
    from proxy.tracing import Tracing

NO_TOKEN_RETRY_CAP: Final = 5.0  # seconds between fetch attempts while calls get 503
MIN_RETRY: Final = 0.1
MIN_AGE_TO_INVALIDATE: Final = 1.0  # seconds; bounds 401-driven fetches to one a second
MAX_RETRY_AFTER: Final = 300.0  # seconds; the longest a token endpoint's Retry-After holds us


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


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits up to ``min(cap, base * 2**n)``."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(attempt, 30))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not crypto


class TokenProvider:
    """The token cache of one credential set."""

    #: Tracing on: each fetch runs under a span (``proxy.tracing``).
    tracing: Tracing | None = None

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
            run = self._run_fetch(wait)
            if self.tracing is not None:
                run = self.tracing.token_fetch(self.creds.name, run)
            self._fetch = asyncio.get_running_loop().create_task(run)
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
        """Backoff, short while there is no token at all (clients get 503s until the
        next attempt), or the endpoint's Retry-After (``asked``, up to 300 s) when that
        is longer: a Retry-After of 0 never shortens the backoff. Either way never so
        long that a held token expires first. (Never sooner than a second after the
        last attempt began, though.)"""
        token = self.current()
        delay = self._backoff.delay(self._failures)
        if token is None:
            delay = min(delay, NO_TOKEN_RETRY_CAP)
        if asked is not None:
            delay = max(delay, min(asked, MAX_RETRY_AFTER))
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
        return await fetch_token(
            self._session, self.creds, self._redactor, ssl=self._ssl, clock=self._clock
        )


def _consume_result(task: asyncio.Task[Token]) -> None:
    if not task.cancelled():
        task.exception()
