"""The proxy's state: one typed object every part of a call reads."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.access import Allowlist
from proxy.config import Config
from proxy.metrics import Metrics
from proxy.redact import Redactor
from proxy.routing import Router
from proxy.tokens import TokenProvider

if TYPE_CHECKING:  # the relay's modules import this one
    from proxy.webhooks.relay import WebhookRelay


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
    webhooks: WebhookRelay | None = None  # set when the config has [[webhooks]]
