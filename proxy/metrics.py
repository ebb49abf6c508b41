"""Prometheus metrics, one registry per app (no globals), cheap on the hot path.

The per-call metrics (calls, durations, body bytes) are plain numbers updated with
dict and list operations, and become Prometheus families only when scraped
(``_CallCollector``): prometheus_client's own counters take a lock and walk Python
code on every update, which cost ~20k instructions a proxied call here. The rare
ones (errors, token fetches) are ordinary prometheus_client metrics.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Metric, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from proxy.groupmetrics import MetricsGroup

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BOUNDS = (*(repr(b) for b in BUCKETS), "+Inf")  # as prometheus_client writes them


@dataclass
class _RouteStats:
    """One route's durations (a count per bucket, not cumulative) and body bytes."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0


class _CallCollector:
    """The per-call metrics as plain numbers, made into families at scrape time."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str, int], int] = {}
        self.routes: dict[str, _RouteStats] = {}

    def observe(
        self, route: str, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        key = (route, method, status)
        self.calls[key] = self.calls.get(key, 0) + 1
        stats = self.routes.get(route)
        if stats is None:
            stats = self.routes[route] = _RouteStats()
        stats.counts[bisect_left(BUCKETS, seconds)] += 1  # le: a bound counts itself
        stats.seconds += seconds
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out

    def collect(self) -> Iterator[Any]:
        calls = CounterMetricFamily(
            "vipps_proxy_requests",
            "Calls answered, by route, method and status.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in self.calls.items():
            calls.add_metric([route, method, str(status)], count)
        yield calls
        duration = HistogramMetricFamily(
            "vipps_proxy_request_duration_seconds",
            "Time from request to the last byte of the answer, by route.",
            labels=["route"],
        )
        bytes_in = CounterMetricFamily(
            "vipps_proxy_request_bytes", "Request body bytes from clients.", labels=["route"]
        )
        bytes_out = CounterMetricFamily(
            "vipps_proxy_response_bytes", "Response body bytes to clients.", labels=["route"]
        )
        for route, stats in self.routes.items():
            cumulative, running = [], 0
            for bound, count in zip(_BOUNDS, stats.counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            duration.add_metric([route], cumulative, sum_value=stats.seconds)
            bytes_in.add_metric([route], stats.bytes_in)
            bytes_out.add_metric([route], stats.bytes_out)
        yield from (duration, bytes_in, bytes_out)

    def describe(self) -> Iterator[Any]:
        return self.collect()


class Metrics:
    """The proxy's metrics; every label value is a route prefix, a name or a number."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: With ``workers > 1``: the run's metrics folder, so a scrape shows the group.
        self.group: MetricsGroup | None = None
        self._calls = _CallCollector()
        self.registry.register(self._calls)
        r = self.registry
        #: Calls being answered now: a plain count, read by the gauge at scrape time
        #: (two locked gauge updates a call cost more than the rest of the metrics).
        self.active = 0
        self.in_flight = Gauge(
            "vipps_proxy_in_flight_requests", "Calls being answered now.", registry=r
        )
        self.in_flight.set_function(lambda: self.active)
        self.upstream_errors = Counter(
            "vipps_proxy_upstream_errors",
            "Upstream failures, by route and kind (connect, timeout, reset, aborted, ...).",
            ["route", "kind"],
            registry=r,
        )
        self.token_fetches = Counter(
            "vipps_proxy_token_fetches",
            "Token fetches by credential set and result (ok, error).",
            ["credentials", "result"],
            registry=r,
        )
        self.token_rejections = Counter(
            "vipps_proxy_token_rejections",
            "Upstream 401s for a call that carried our token, by credential set.",
            ["credentials"],
            registry=r,
        )
        self.config_reloads = Counter(
            "vipps_proxy_config_reloads",
            "Config reloads by result (ok, error).",
            ["result"],
            registry=r,
        )
        self.last_reload_success = Gauge(
            "vipps_proxy_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded with success (start-up or reload), Unix time.",
            registry=r,
        )
        self.last_reload_success.set_to_current_time()

    def token_fetch(self, credentials: str, result: str) -> None:
        self.token_fetches.labels(credentials, result).inc()

    def observe_call(
        self,
        route: str,
        method: str,
        status: int,
        seconds: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        if method not in KNOWN_METHODS:
            method = "OTHER"  # client-chosen strings must not grow the label set
        self._calls.observe(route, method, status, seconds, bytes_in, bytes_out)

    def families(self) -> list[Metric]:
        """This process's metric families, as a scrape would see them."""
        return list(self.registry.collect())

    def render(self) -> bytes:
        """The Prometheus text: this process's, or with ``group`` set, the group's."""
        if self.group is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry(auto_describe=False)
        merged.register(_Families(self.group.collect(self.families())))
        return generate_latest(merged)


class _Families:
    """Families already made (the group's, summed), for a registry to render."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
