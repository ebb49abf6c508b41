"""The proxy's state: one snapshot of a config that every part of a call reads.

A snapshot is built whole, by ``build_state`` alone, and then never changed (it is
frozen): a reload (``proxy.reload``) builds a new one beside it and swaps the app's
reference. A call reads the reference once, at its start, and keeps that snapshot to
its end.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from proxy.access import Allowlist, admission
from proxy.config import Config
from proxy.forwarding import Forwarder
from proxy.metrics import Metrics
from proxy.redact import Redactor
from proxy.routing import Router
from proxy.tokens import TokenProvider
from proxy.upstream import UpstreamPool

if TYPE_CHECKING:  # loaded only when the config has [[webhooks]]
    from proxy.webhooks.service import WebhookRelay


@dataclass(frozen=True)
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
    tokens: Mapping[str, TokenProvider]  # a cache per bearer set; none before the app starts
    webhooks: WebhookRelay | None  # when the config has [[webhooks]]
    forwarder: Forwarder

    @cached_property
    def admission(self) -> Allowlist | None:
        """Who may connect (``proxy.access.admission``); the webhooks are the relay's."""
        hooks = self.webhooks.hooks.values() if self.webhooks is not None else ()
        return admission(self.config.server.allow_clients, hooks)


def build_state(
    config: Config,
    pool: UpstreamPool,
    *,
    metrics: Metrics,
    redactor: Redactor,
    placeholder: str,
    upstream_ssl: ssl.SSLContext,
    tokens: Mapping[str, TokenProvider],
    webhooks: WebhookRelay | None,
) -> ProxyState:
    """The one way a snapshot is made: whole, its allowlist, router and forwarder (over
    the app's ``pool``) made here from ``config``, the rest handed in."""
    return ProxyState(
        config=config,
        allowlist=Allowlist(config.server.allow_clients),
        router=Router(config.routes),
        metrics=metrics,
        redactor=redactor,
        placeholder=placeholder,
        upstream_ssl=upstream_ssl,
        tokens=tokens,
        webhooks=webhooks,
        forwarder=Forwarder(config, metrics, tokens, upstream_ssl, pool),
    )
