"""The proxy's state: one snapshot of a config that every part of a call reads.

A snapshot is built whole and then never changed: a reload (``proxy.reload``) builds a
new one beside it and swaps the app's reference. A call reads the reference once, at
its start, and keeps that snapshot to its end.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from proxy.access import Allowlist, admission
from proxy.config import Config
from proxy.metrics import Metrics
from proxy.redact import Redactor
from proxy.routing import Router
from proxy.tokens import TokenProvider

if TYPE_CHECKING:  # these modules import this one
    from proxy.forwarding import Forwarder
    from proxy.webhooks.relay import WebhookRelay


@dataclass
class ProxyState:
    """Everything a request handler needs for one config. ``metrics``, ``redactor`` and
    ``placeholder`` belong to the process and pass from one snapshot to the next."""

    config: Config
    allowlist: Allowlist
    router: Router
    metrics: Metrics
    redactor: Redactor
    placeholder: str
    upstream_ssl: ssl.SSLContext
    tokens: Mapping[str, TokenProvider] = field(default_factory=dict)
    webhooks: WebhookRelay | None = None  # set when the config has [[webhooks]]
    forwarder: Forwarder = field(init=False)  # set once, right after the snapshot is made

    @cached_property
    def admission(self) -> Allowlist | None:
        """Who may connect (``proxy.access.admission``); the webhooks are the relay's."""
        hooks = self.webhooks.hooks.values() if self.webhooks is not None else ()
        return admission(self.config.server.allow_clients, hooks)
