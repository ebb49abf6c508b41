"""``[tracing]``: OpenTelemetry spans sent over OTLP/HTTP to a collector, and whether
the ``tracing`` extra is installed to send them."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

from proxy.config.values import ConfigError, Table, check_type, join
from proxy.secret import Secret


@dataclass(frozen=True)
class TracingConfig:
    """``[tracing]``: OpenTelemetry spans over OTLP/HTTP; off while ``endpoint`` is empty."""

    endpoint: str = ""
    service_name: str = "vipps-proxy"
    sample_ratio: float = 1.0  # parent-based: a client's sampled flag wins
    headers: Mapping[str, Secret] = field(default_factory=dict)  # for the collector


def parse_tracing(t: Table) -> TracingConfig:
    t.allow_only("endpoint", "service_name", "sample_ratio", "headers")
    endpoint = t.get("endpoint", str, "").strip()
    ratio = t.number("sample_ratio", 1.0)
    if ratio > 1:
        raise ConfigError(join(t.key, "sample_ratio"), "must be between 0 and 1")
    headers = t.table("headers")
    config = TracingConfig(
        endpoint=endpoint,
        service_name=t.get("service_name", str, "vipps-proxy").strip() or "vipps-proxy",
        sample_ratio=ratio,
        headers={
            n: Secret(check_type(v, str, join(headers.key, n))) for n, v in headers.data.items()
        },
    )
    if endpoint:
        _check_collector_url(endpoint, join(t.key, "endpoint"))
    return config


def _check_collector_url(endpoint: str, key: str) -> None:
    """An http(s) URL, and the ``tracing`` extra installed to send to it."""
    url = URL(endpoint)
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(key, f"must be an http:// or https:// URL, not {endpoint!r}")
    if not _tracing_installed():
        raise ConfigError(
            key, "tracing needs the extra: pip install 'vipps-proxy[tracing]' (not installed)"
        )


def _tracing_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ImportError:  # a parent package missing or blocked
        return False
