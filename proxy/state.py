"""The proxy's state: one typed object every part of a call reads."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from proxy.access import Allowlist
from proxy.config import Config
from proxy.metrics import Metrics
from proxy.redact import Redactor
from proxy.routing import Router
from proxy.tokens import TokenProvider


@dataclass
class ProxyState:
    """Everything a request handler needs, built once at start-up."""

    config: Config
    allowlist: Allowlist
    router: Router
    metrics: Metrics
    redactor: Redactor
    placeholder: str
    upstream_ssl: ssl.SSLContext
    tokens: dict[str, TokenProvider] = field(default_factory=dict)
    draining: bool = False  # set when shutdown begins; calls cut after this say so
