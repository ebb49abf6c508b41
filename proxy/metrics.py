"""Prometheus metrics, one registry per app (no globals), cheap on the hot path.

The per-call metrics (calls, durations, body bytes) are plain numbers updated with
dict and list operations, and become Prometheus families only when scraped
(``_CallCollector``): prometheus_client's own counters take a lock and walk Python
code on every update, which cost ~20k instructions a proxied call here. The rare
ones (errors, token fetches) are ordinary prometheus_client metrics. The process's own
(``process_*``: CPU, memory, open files, start time) are prometheus_client's. No
``*_created`` series: prometheus_client's are turned off for the whole process.
"""

from __future__ import annotations

import platform
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import aiohttp
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Metric,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from proxy import __version__
from proxy.families import ScrapeCollector, family
from proxy.groupmetrics import MetricsGroup

# A `*_created` series per counter: noise no dashboard reads, and undocumented.
disable_created_metrics()  # type: ignore[no-untyped-call]

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BOUNDS = (*(repr(b) for b in BUCKETS), "+Inf")  # as prometheus_client writes them


@dataclass
class _Durations:
    """Durations as a count per bucket (not cumulative) and their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1  # le: a bound counts itself
        self.seconds += seconds

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        cumulative, running = [], 0
        for bound, count in zip(_BOUNDS, self.counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        family.add_metric(labels, cumulative, sum_value=self.seconds)


@dataclass
class _RouteStats(_Durations):
    """One route's durations and body bytes."""

    bytes_in: int = 0
    bytes_out: int = 0


class _CallCollector(ScrapeCollector):
    """The per-call metrics as plain numbers, made into families at scrape time."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str, int], int] = {}
        self.routes: dict[str, _RouteStats] = {}
        self.upstream: dict[tuple[str, str], _Durations] = {}

    def observe(
        self, route: str, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        key = (route, method, status)
        self.calls[key] = self.calls.get(key, 0) + 1
        stats = self.routes.get(route)
        if stats is None:
            stats = self.routes[route] = _RouteStats()
        stats.observe(seconds)
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out

    def collect(self) -> Iterator[Metric]:
        yield family(
            CounterMetricFamily,
            "vipps_proxy_requests",
            "Calls answered, by route, method and status.",
            ["route", "method", "status"],
            (
                ([route, method, str(status)], n)
                for (route, method, status), n in self.calls.items()
            ),
        )
        duration = HistogramMetricFamily(
            "vipps_proxy_request_duration_seconds",
            "Time from request to the last byte of the answer, by route.",
            labels=["route"],
        )
        for route, stats in self.routes.items():
            stats.add_to(duration, [route])
        yield duration
        routes = self.routes.items()
        yield family(
            CounterMetricFamily,
            "vipps_proxy_request_bytes",
            "Request body bytes from clients.",
            ["route"],
            (([route], stats.bytes_in) for route, stats in routes),
        )
        yield family(
            CounterMetricFamily,
            "vipps_proxy_response_bytes",
            "Response body bytes to clients.",
            ["route"],
            (([route], stats.bytes_out) for route, stats in routes),
        )
        upstream = HistogramMetricFamily(
            "vipps_proxy_upstream_duration_seconds",
            "Time from the request written upstream to the answer's head, by route and "
            "credential set.",
            labels=["route", "credentials"],
        )
        for (route, credentials), durations in self.upstream.items():
            durations.add_to(upstream, [route, credentials])
        yield upstream


#: Where the held tokens' expiries come from: (credential set, seconds left) pairs.
TokenLives = Callable[[], Iterable[tuple[str, float]]]


class _TokenExpiryCollector(ScrapeCollector):
    """Each held token's expiry as a wall-clock time, read from the app at scrape time."""

    def __init__(self) -> None:
        self.source: TokenLives = lambda: ()

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        yield family(
            GaugeMetricFamily,
            "vipps_proxy_token_expiry_timestamp_seconds",
            "When the token held for a credential set stops being used, Unix time.",
            ["credentials"],
            (([name], now + left) for name, left in self.source()),
        )


class Metrics:
    """The proxy's metrics; every label value is a route prefix, a name or a number."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: With ``workers > 1``: the run's metrics folder, so a scrape shows the group.
        self.group: MetricsGroup | None = None
        self._calls = _CallCollector()
        self.registry.register(self._calls)
        self._tokens = _TokenExpiryCollector()
        self.registry.register(self._tokens)
        r = self.registry
        ProcessCollector(registry=r)
        Gauge(
            "vipps_proxy_build_info",
            "The running version, and Python's and aiohttp's (always 1).",
            ["version", "python", "aiohttp"],
            registry=r,
        ).labels(__version__, platform.python_version(), aiohttp.__version__).set(1)
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

    def watch_tokens(self, source: TokenLives) -> None:
        """Read the held tokens' lives from ``source`` at each scrape."""
        self._tokens.source = source

    def observe_upstream(self, route: str, credentials: str, seconds: float) -> None:
        """An upstream answer's head came ``seconds`` after its request was written."""
        key = (route, credentials)
        durations = self._calls.upstream.get(key)
        if durations is None:
            durations = self._calls.upstream[key] = _Durations()
        durations.observe(seconds)

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
