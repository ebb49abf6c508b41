"""The relay's metrics, registered on the app's registry.

``pending`` and ``oldest_pending_seconds`` come from the shared store, read by the
relay off the event loop every few seconds (``Pending`` rows), never at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from proxy.webhooks.store import Pending


class _PendingCollector:
    def __init__(self, hooks: Iterable[str]) -> None:
        self.hooks = tuple(hooks)
        self.rows: list[Pending] = []

    def collect(self) -> Iterator[Any]:
        pending = GaugeMetricFamily(
            "vipps_proxy_webhooks_pending", "Events not yet delivered, by path.", labels=["path"]
        )
        oldest = GaugeMetricFamily(
            "vipps_proxy_webhooks_oldest_pending_seconds",
            "Age of the oldest event not yet delivered, by path (0: none).",
            labels=["path"],
        )
        now = time.time()
        by_hook = {row.hook: row for row in self.rows}
        for hook in self.hooks:
            row = by_hook.get(hook)
            pending.add_metric([hook], row.count if row else 0)
            oldest.add_metric([hook], max(0.0, now - row.oldest_created_at) if row else 0.0)
        yield pending
        yield oldest

    def describe(self) -> Iterator[Any]:
        return self.collect()


class WebhookMetrics:
    """Received and delivered counters; pending gauges from the last store reading."""

    def __init__(self, registry: CollectorRegistry, hooks: Iterable[str]) -> None:
        self.received = Counter(
            "vipps_proxy_webhooks_received",
            "Webhooks and callbacks received, by path and result "
            "(accepted, duplicate, unauthorized, too_large, ...).",
            ["path", "result"],
            registry=registry,
        )
        self.delivered = Counter(
            "vipps_proxy_webhooks_delivered",
            "Delivery attempts to the app, by path and result (delivered, retry, failed).",
            ["path", "result"],
            registry=registry,
        )
        self._pending = _PendingCollector(hooks)
        registry.register(self._pending)

    def set_pending(self, rows: list[Pending]) -> None:
        self._pending.rows = rows
