"""The relay's metrics, registered on the app's registry.

``pending`` and ``oldest_pending_seconds`` come from the shared store, read by the
relay off the event loop every few seconds (``Pending`` rows), never at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Metric
from prometheus_client.core import GaugeMetricFamily

from proxy.families import ScrapeCollector, family
from proxy.webhooks.store import Pending


class _PendingCollector(ScrapeCollector):
    def __init__(self, hooks: Iterable[str]) -> None:
        self.hooks = tuple(hooks)
        self.rows: list[Pending] = []

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        by_hook = {row.hook: row for row in self.rows}
        rows = [(hook, by_hook.get(hook)) for hook in self.hooks]
        yield family(
            GaugeMetricFamily,
            "vipps_proxy_webhooks_pending",
            "Events not yet delivered, by path.",
            ["path"],
            (([hook], row.count if row else 0) for hook, row in rows),
        )
        yield family(
            GaugeMetricFamily,
            "vipps_proxy_webhooks_oldest_pending_seconds",
            "Age of the oldest event not yet delivered, by path (0: none).",
            ["path"],
            (([hook], max(0.0, now - row.oldest_created_at) if row else 0.0) for hook, row in rows),
        )


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
