"""``Bounds``: how much the store takes in, per hook and per eCom sender.

``max_pending`` bounds a hook's events waiting or failed (read from the store every
few seconds, plus what this process stored since) together with those admitted and
not yet stored: past it, 503. ``admit`` counts the event at once as in flight (no
await between the check and the count, so a burst of concurrent calls cannot all pass
it); ``committed`` moves it to the stored count, ``release`` takes it back when it was
not stored. A refresh from the store replaces only the stored count, so events in
flight while the store is read are never forgotten. ``max_per_minute``
bounds what one client address may have stored on an ``ecom-callback`` hook in one
clock minute: past it, 429 with ``Retry-After`` (the seconds to the next minute).
Each refusal counts in ``vipps_proxy_webhooks_received_total`` under its own
``result`` (``over_max_pending``, ``over_max_per_minute``); one warning line per
hook, result and ``WARN_EVERY`` seconds says how many were refused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Final

import structlog

from proxy import events
from proxy.config import Webhook
from proxy.errors import StoreFull, TooManyCallbacks

WARN_EVERY: Final = 10.0  # seconds between two warnings for one hook and bound
OVER_PENDING: Final = "over_max_pending"
OVER_RATE: Final = "over_max_per_minute"
_log = structlog.get_logger("proxy.webhooks")


class Bounds:
    """The bounds of every hook, and what was counted against them."""

    def __init__(self, hooks: Mapping[str, Webhook]) -> None:
        self.hooks = hooks
        self._backlog: dict[str, int] = {}  # stored: the store's count, plus commits since
        self._in_flight: dict[str, int] = {}  # admitted, not yet stored (or refused)
        self._minute = -1
        self._senders: dict[tuple[str, str], int] = {}
        self._warned_at: dict[tuple[str, str], float] = {}
        self._unwarned: dict[tuple[str, str], int] = {}

    def set_backlog(self, counts: Mapping[str, int]) -> None:
        """Events waiting or failed per hook, as the store holds them now."""
        self._backlog = dict(counts)

    def admit(self, hook: Webhook, client: str, now: float) -> None:
        """Count the event against ``hook``'s bounds, or raise ``StoreFull`` or
        ``TooManyCallbacks`` if it is past one."""
        held = self._backlog.get(hook.path, 0) + self._in_flight.get(hook.path, 0)
        if held >= hook.max_pending:
            self._warn(hook, OVER_PENDING, limit=hook.max_pending)
            raise StoreFull(f"{hook.max_pending} events are waiting for this path; try again")
        if hook.kind == "ecom-callback":
            self._per_minute(hook, client, now)
        self._in_flight[hook.path] = self._in_flight.get(hook.path, 0) + 1

    def committed(self, hook: Webhook) -> None:
        """An admitted event is in the store."""
        self.release(hook)
        self._backlog[hook.path] = self._backlog.get(hook.path, 0) + 1

    def release(self, hook: Webhook) -> None:
        """An admitted event was not stored (a duplicate, or the store failed)."""
        self._in_flight[hook.path] = self._in_flight.get(hook.path, 1) - 1

    def _per_minute(self, hook: Webhook, client: str, now: float) -> None:
        minute = math.floor(now / 60)
        if minute != self._minute:
            self._minute, self._senders = minute, {}
        sent = self._senders.get((hook.path, client), 0)
        if sent >= hook.max_per_minute:
            self._warn(hook, OVER_RATE, limit=hook.max_per_minute, client=client)
            retry_after = max(1, math.ceil((minute + 1) * 60 - now))
            raise TooManyCallbacks(
                f"at most {hook.max_per_minute} a minute", retry_after=retry_after
            )
        self._senders[hook.path, client] = sent + 1

    def _warn(self, hook: Webhook, result: str, **fields: object) -> None:
        key = (hook.path, result)
        now = time.monotonic()
        if now - self._warned_at.get(key, -WARN_EVERY) < WARN_EVERY:
            self._unwarned[key] = self._unwarned.get(key, 0) + 1
            return
        self._warned_at[key] = now
        refused = self._unwarned.pop(key, 0) + 1
        _log.warning(
            events.WEBHOOK_RECEIVED, path=hook.path, result=result, refused=refused, **fields
        )
