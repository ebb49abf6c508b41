"""``StoreFaults``: what the relay knows of its store's health, and how it says so.

Every failed store operation counts in ``vipps_proxy_webhook_store_errors_total{op}``
and logs one ``webhook_store_failed`` line per ``op`` per ``LOG_EVERY`` seconds, with
the error's class and text and how many were left unlogged, never a traceback (a full
disk must not fill with log lines). A failed write means the store cannot commit: the
relay is then not ready (``/-/ready`` 503) until a write succeeds again.
"""

from __future__ import annotations

import time
from typing import Final

import structlog
from prometheus_client import CollectorRegistry, Counter

from proxy import events

LOG_EVERY: Final = 10.0  # seconds between two log lines for one op
#: Operations that write: their failure means the store cannot commit.
WRITES: Final = frozenset(
    {"add", "mark_delivered", "mark_retry", "mark_failed", "prune", "probe", "reopen"}
)
_log = structlog.get_logger("proxy.webhooks")


class StoreFaults:
    """Counts and logs store failures; ``can_commit`` until a write fails."""

    def __init__(self, registry: CollectorRegistry, store: str) -> None:
        self.store = store
        self.errors = Counter(
            "vipps_proxy_webhook_store_errors",
            "Failed operations on the webhook store, by op (add, due, mark_delivered, ...).",
            ["op"],
            registry=registry,
        )
        self.can_commit = True
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def failed(self, op: str, error: BaseException | str) -> None:
        """``op`` failed with ``error``: count it, and log it unless logged lately."""
        self.errors.labels(op).inc()
        if op in WRITES:
            self.can_commit = False
        now = time.monotonic()
        if now - self._logged_at.get(op, -LOG_EVERY) < LOG_EVERY:
            self._unlogged[op] = self._unlogged.get(op, 0) + 1
            return
        self._logged_at[op] = now
        text = error if isinstance(error, str) else f"{error.__class__.__name__}: {error}"
        _log.error(
            events.WEBHOOK_STORE_FAILED,
            store=self.store,
            op=op,
            error=text[:200],
            unlogged=self._unlogged.pop(op, 0),
        )

    def committed(self) -> None:
        """A write reached the store: it can commit again."""
        self.can_commit = True
