"""``Deliverer``: hands stored events to the legacy app until it takes them.

Each attempt sends the event's method, its body byte for byte and its headers less the
hop-by-hop ones, plus ``Vipps-Proxy-Event-Id``, ``Vipps-Proxy-Attempt`` and
``Vipps-Proxy-Received-At`` (when the proxy acknowledged the event: RFC 3339, UTC, in
milliseconds, ``2026-12-07T16:02:45.123Z``), so the app can order events itself. A 2xx
within ``ATTEMPT_TIMEOUT`` means delivered; anything else is tried again after a
backoff that starts at 1 s and doubles to at most 5 min, until ``retry_for`` has
passed since the event arrived; then it is marked failed and kept.

The store hands out only the oldest pending event of each hook and ordering key, so a
payment's events arrive in order and a stuck one holds back only its own payment on its
own hook (an unsigned eCom callback never holds back a signed webhook). Only the
holder of the ``Lease`` delivers; the others keep trying to take it over.

An outcome the store cannot record (a full disk) is held in memory and written again
after ``STORE_RETRY`` or the event's next backoff step, whichever is longer; the event
is not sent again meanwhile, so a store that reads but cannot write never makes the
relay resend faster than its backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote_plus

import aiohttp
import structlog
from yarl import URL

from proxy import events
from proxy.config import Webhook
from proxy.headers import HOP_BY_HOP, filtered
from proxy.webhooks.faults import StoreFaults
from proxy.webhooks.lease import Lease
from proxy.webhooks.metrics import WebhookMetrics
from proxy.webhooks.store import Event, Store

if TYPE_CHECKING:  # loaded only when [tracing] is on
    from proxy.tracing import Tracing

ATTEMPT_TIMEOUT: Final = 10.0
FIRST_BACKOFF: Final = 1.0
MAX_BACKOFF: Final = 300.0
POLL: Final = 0.5  # seconds between looks at the store (events other workers took in)
LEASE_RETRY: Final = 2.0  # seconds between tries to take the lease over
#: Delivered events are kept this long (twice Vipps' 7 days of retries), and at least
#: twice any hook's ``max_age`` (an ``x-ms-date`` may be up to ``max_age`` ahead when it
#: arrives and verifies until ``max_age`` after it), so a replay that still verifies is
#: still recognised as a duplicate; then pruned, hourly. Failed ones stay.
KEEP_DELIVERED: Final = 14 * 86400.0
PRUNE_EVERY: Final = 3600.0
STORE_RETRY: Final = 1.0  # seconds before trying again after the store failed
MAX_ANSWER: Final = 64 * 1024  # bytes of the app's answer read (and dropped)
EVENT_ID: Final = "Vipps-Proxy-Event-Id"
ATTEMPT: Final = "Vipps-Proxy-Attempt"
RECEIVED_AT: Final = "Vipps-Proxy-Received-At"
#: What never goes to the app: connection fields, and what aiohttp sets for this hop.
DELIVERY_DROP: Final = HOP_BY_HOP | frozenset(
    {"host", "content-length", "expect", EVENT_ID.lower(), ATTEMPT.lower(), RECEIVED_AT.lower()}
)
#: Headers aiohttp would add by itself; the app sees only what Vipps sent.
NO_AUTO_HEADERS: Final = ("User-Agent", "Content-Type", "Accept", "Accept-Encoding")

_log = structlog.get_logger("proxy.webhooks")


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: 1, 2, 4, ... 300."""
    return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(attempts - 1, 20)))


def received_at(when: float) -> str:
    """``Vipps-Proxy-Received-At``: RFC 3339 in UTC with milliseconds."""
    stamp = datetime.fromtimestamp(when, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def callback_rest(hook: Webhook, received_path: str) -> str:
    """What follows an eCom callback prefix; a doubled slash right after it counts as
    one (a ``callbackPrefix`` ending in ``/`` makes Vipps call ``{prefix}//v2/...``)."""
    rest = received_path[len(hook.path) :]
    return rest[1:] if rest.startswith("//") else rest


def delivery_url(hook: Webhook, received_path: str) -> URL:
    """``deliver_to``; for an eCom callback prefix, with the rest of the received path
    below its path (``/cb?key=k`` and ``/v2/payments/o-1``: ``/cb/v2/payments/o-1?key=k``)
    and a received query after its own (`merged_query`)."""
    if hook.kind != "ecom-callback":
        return hook.deliver_to
    rest = callback_rest(hook, received_path)
    if not rest:
        return hook.deliver_to
    rest_path, asked, rest_query = rest.partition("?")  # the path is empty or "/..."
    head = str(hook.deliver_to.with_query(None))
    if rest_path:
        head = head.rstrip("/")
    query = merged_query(hook.deliver_to.raw_query_string, rest_query)
    return URL(head + rest_path + ("?" + query if query or asked else ""), encoded=True)


def merged_query(own: str, received: str) -> str:
    """``deliver_to``'s query whole and first, then the received parameters it does not
    name (by decoded name): an unsigned sender cannot shadow or drop an app key."""
    if not own:
        return received
    names = {_name(part) for part in own.split("&")}
    kept = [part for part in received.split("&") if part and _name(part) not in names]
    return "&".join([own, *kept])


def _name(parameter: str) -> str:
    return unquote_plus(parameter.partition("=")[0])


@dataclass
class _Held:
    """An outcome the store failed to record: written again at ``until``."""

    op: str
    write: Callable[[], None]
    attempt: int
    until: float = 0.0
    tries: int = 0

    def pause(self, now: float) -> None:
        """Wait the store's pause or the event's next backoff step, the longer."""
        self.tries += 1
        self.until = now + max(STORE_RETRY, backoff(self.attempt + self.tries - 1))


@dataclass
class _Outcome:
    delivered: bool
    status: int = 0
    error: str = ""


class Deliverer:
    """The delivery loop for one store and its hooks (keyed by configured path)."""

    #: Tracing on: a span per attempt (``proxy.tracing``).
    tracing: Tracing | None = None

    def __init__(
        self,
        store: Store,
        hooks: Mapping[str, Webhook],
        metrics: WebhookMetrics,
        ssl_context: ssl.SSLContext,
        faults: StoreFaults,
    ) -> None:
        self.store = store
        self.hooks = hooks
        self.keep_delivered = max([KEEP_DELIVERED, *(2 * h.max_age for h in hooks.values())])
        self.metrics = metrics
        self.faults = faults
        self.lease = Lease(store.path)
        self._ssl = ssl_context
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._held: dict[str, _Held] = {}  # by event id

    def wake(self) -> None:
        """A new event is stored: look now, not at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Forever: take the lease, then deliver while holding it. A lease whose lock
        file was deleted or replaced is given up, then taken again like any other."""
        while True:
            if not self.lease.acquire():
                await asyncio.sleep(LEASE_RETRY)
                continue
            _log.info(events.WEBHOOK_DELIVERY_STARTED, store=str(self.store.path))
            try:
                async with self._session() as session:
                    await self._deliver_forever(session)
            finally:
                for task in self._in_flight.values():
                    task.cancel()
                await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
                self.lease.release()

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=64),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT),
        )

    async def _deliver_forever(self, session: aiohttp.ClientSession) -> None:
        pruned_at = 0.0
        while self.lease.still_held():
            self._wake.clear()
            try:
                await self._follow_store()
                pruned_at = await self._start_due(session, pruned_at)
                wait = await self._idle_time()
            except sqlite3.Error as exc:  # a broken file: keep trying, counted
                self.faults.failed("due", exc)
                wait = STORE_RETRY
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel that
            # lands as the wake-up does, and the loop would outlive its app.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
        # the lock file is gone: let what is under way finish, then take the lease anew
        await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def _follow_store(self) -> None:
        """Reopen the store if its path names another file now (or none)."""
        if not await self.store.run(self.store.same_file):
            await self.store.run(functools.partial(self.store.reopen, moved=True))
            self.faults.failed("file_check", "the store file was deleted or replaced; reopened")

    async def _start_due(self, session: aiohttp.ClientSession, pruned_at: float) -> float:
        """Start an attempt for each due event not already under way; prune hourly."""
        now = time.time()
        if now - pruned_at > PRUNE_EVERY:
            pruned_at = now  # failed or not, next in an hour
            prune = functools.partial(self.store.prune, now - self.keep_delivered)
            with contextlib.suppress(sqlite3.Error):
                await self._write("prune", prune)
        for event in await self.store.run(self.store.due, now):
            if event.id in self._in_flight:
                continue
            if (held := self._held.get(event.id)) is not None:
                if held.until <= now and await self._rewrite(held):
                    del self._held[event.id]
                continue
            task = asyncio.create_task(self._attempt(session, event), name=event.id)
            self._in_flight[event.id] = task
            task.add_done_callback(self._done)
        return pruned_at

    async def _write(self, op: str, write: Callable[[], object]) -> None:
        """``write`` on the store's thread; a failure is counted and raised."""
        try:
            await self.store.run(write)
        except sqlite3.Error as exc:
            self.faults.failed(op, exc)
            raise
        self.faults.committed()

    async def _record(self, event: Event, attempt: int, op: str, write: Callable[[], None]) -> None:
        """Record an attempt's outcome; if the store fails, hold it and try again later."""
        try:
            await self._write(op, write)
        except sqlite3.Error:
            held = self._held[event.id] = _Held(op, write, attempt)
            held.pause(time.time())

    async def _rewrite(self, held: _Held) -> bool:
        """Write a held outcome again; True once it is recorded."""
        try:
            await self._write(held.op, held.write)
        except sqlite3.Error:
            held.pause(time.time())
            return False
        return True

    async def _idle_time(self) -> float:
        """Until the next event is due, at most POLL; attempts ending wake us sooner."""
        if self._in_flight or self._held:  # a held event looks due in the store: poll
            return POLL
        following = await self.store.run(self.store.next_attempt_at)
        return POLL if following is None else min(POLL, max(0.0, following - time.time()))

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task.get_name(), None)
        self._wake.set()
        if not task.cancelled() and (error := task.exception()) is not None:
            _log.error(events.WEBHOOK_STORE_FAILED, event_id=task.get_name(), exc_info=error)

    async def _attempt(self, session: aiohttp.ClientSession, event: Event) -> None:
        hook = self.hooks.get(event.hook)
        attempt = event.attempts + 1
        if hook is None:  # its [[webhooks]] entry is gone: keep it, but stop trying
            failed = functools.partial(self.store.mark_failed, event.id, event.attempts, "no_hook")
            await self._record(event, event.attempts, "mark_failed", failed)
            return
        span = None
        if self.tracing is not None:  # the attempt's span, linked to the receive
            event, span = self.tracing.delivery(event, attempt)
        outcome = await _send(session, hook, event, attempt)
        if self.tracing is not None and span is not None:
            self.tracing.delivered(span, outcome.status, outcome.error)
        now = time.time()
        fields = {
            "path": hook.path,
            "event_id": event.id,
            "reference": event.ordering_key or None,
            "attempt": attempt,
            "status": outcome.status or None,
        }
        if outcome.delivered:
            delivered = functools.partial(self.store.mark_delivered, event.id, attempt)
            await self._record(event, attempt, "mark_delivered", delivered)
            self.metrics.delivered.labels(hook.path, "delivered").inc()
            _log.info(events.WEBHOOK_DELIVERED, **fields)
            return
        if now >= event.created_at + hook.retry_for:
            failed = functools.partial(self.store.mark_failed, event.id, attempt, outcome.error)
            await self._record(event, attempt, "mark_failed", failed)
            self.metrics.delivered.labels(hook.path, "failed").inc()
            _log.error(events.WEBHOOK_RETRY, **fields, error=outcome.error, result="failed")
            return
        next_at = min(now + backoff(attempt), event.created_at + hook.retry_for)
        retry = functools.partial(self.store.mark_retry, event.id, attempt, next_at, outcome.error)
        await self._record(event, attempt, "mark_retry", retry)
        self.metrics.delivered.labels(hook.path, "retry").inc()
        _log.warning(
            events.WEBHOOK_RETRY,
            **fields,
            error=outcome.error,
            result="retry",
            retry_in_s=round(next_at - now, 3),
        )


async def _send(
    session: aiohttp.ClientSession, hook: Webhook, event: Event, attempt: int
) -> _Outcome:
    headers = filtered(event.headers, DELIVERY_DROP)
    headers += [
        (EVENT_ID, event.id),
        (ATTEMPT, str(attempt)),
        (RECEIVED_AT, received_at(event.received_at)),
    ]
    try:
        async with session.request(
            event.method,
            delivery_url(hook, event.path),
            data=event.body,
            headers=headers,
            skip_auto_headers=NO_AUTO_HEADERS,
            allow_redirects=False,
        ) as response:
            await response.content.read(MAX_ANSWER)  # the status is the answer; no more
    except TimeoutError:
        return _Outcome(False, error="timeout")
    except aiohttp.ClientConnectorError:
        return _Outcome(False, error="connect_failed")
    except aiohttp.ClientError as exc:
        return _Outcome(False, error=f"broken_{exc.__class__.__name__}")
    if 200 <= response.status < 300:
        return _Outcome(True, response.status)
    return _Outcome(False, response.status, f"status_{response.status}")
