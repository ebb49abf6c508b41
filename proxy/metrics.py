"""Prometheus metrics, one registry per app (no globals), cheap on the hot path."""

from __future__ import annotations

from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _RouteChildren(NamedTuple):
    duration: Any
    bytes_in: Any
    bytes_out: Any


class Metrics:
    """The proxy's metrics; every label value is a route prefix, a name or a number."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Labelled children, looked up once: ``labels()`` validates and locks every time.
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._by_route: dict[str, _RouteChildren] = {}
        r = self.registry
        self.requests = Counter(
            "vipps_proxy_requests",
            "Calls answered, by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "vipps_proxy_request_duration_seconds",
            "Time from request to the last byte of the answer, by route.",
            ["route"],
            buckets=BUCKETS,
            registry=r,
        )
        self.bytes_in = Counter(
            "vipps_proxy_request_bytes", "Request body bytes from clients.", ["route"], registry=r
        )
        self.bytes_out = Counter(
            "vipps_proxy_response_bytes", "Response body bytes to clients.", ["route"], registry=r
        )
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
        key = (route, method, status)
        requests = self._requests.get(key)
        if requests is None:
            requests = self._requests[key] = self.requests.labels(route, method, str(status))
        requests.inc()
        children = self._by_route.get(route)
        if children is None:
            children = self._by_route[route] = _RouteChildren(
                self.duration.labels(route),
                self.bytes_in.labels(route),
                self.bytes_out.labels(route),
            )
        children.duration.observe(seconds)
        if bytes_in:
            children.bytes_in.inc(bytes_in)
        if bytes_out:
            children.bytes_out.inc(bytes_out)

    def render(self) -> bytes:
        return generate_latest(self.registry)
