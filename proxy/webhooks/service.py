"""``WebhookRelay``: the receiver, the store and the deliverer of one app, put together.

``match`` is the one check on every call's path (a dict lookup, and a prefix test per
eCom callback hook); ``start`` and ``close`` run with the app's. ``use_secrets`` is how
a reload hands over new webhook secrets: the rest of ``[[webhooks]]`` needs a restart.
While a write to the store has failed, ``can_commit`` is False (``/-/ready`` answers
503) and a one-row write is tried every ``STORE_RETRY`` seconds until one commits.
"""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
import time
from typing import Final

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.access import Allowlist
from proxy.calls import CallRecord
from proxy.config import Config, Webhook
from proxy.startup import StartupError
from proxy.webhooks.bounds import Bounds
from proxy.webhooks.deliver import STORE_RETRY, Deliverer
from proxy.webhooks.faults import StoreFaults
from proxy.webhooks.metrics import WebhookMetrics
from proxy.webhooks.receive import Receiver
from proxy.webhooks.store import Store

PENDING_REFRESH: Final = 5.0  # seconds between readings of the pending gauges


class WebhookRelay:
    """Every ``[[webhooks]]`` entry of a config, and the store they share."""

    def __init__(
        self, config: Config, registry: CollectorRegistry, ssl_context: ssl.SSLContext
    ) -> None:
        self.hooks = {hook.path: hook for hook in config.webhooks}
        self._exact = {p: h for p, h in self.hooks.items() if h.kind == "vipps-webhook"}
        prefixes = [h for h in self.hooks.values() if h.kind == "ecom-callback"]
        self._prefixes = sorted(prefixes, key=lambda h: len(h.path), reverse=True)
        self.store = Store(config.store.path)
        self.metrics = WebhookMetrics(registry, self.hooks)
        self.faults = StoreFaults(registry, str(self.store.path))
        self.bounds = Bounds(self.hooks)
        self.deliverer = Deliverer(self.store, self.hooks, self.metrics, ssl_context, self.faults)
        allow = config.server.allow_clients
        allowlists = {h.path: Allowlist((*allow, *h.allow_from)) for h in prefixes}
        self.receiver = Receiver(
            self.store,
            self.metrics,
            allowlists,
            self.deliverer.wake,
            self.bounds,
            self.faults,
            body_timeout=config.server.body_timeout,
        )
        self.use_secrets(config)
        self._ssl = ssl_context
        self._tasks: list[asyncio.Task[None]] = []

    def use_secrets(self, config: Config) -> None:
        """Verify with ``config``'s webhook secrets from now on (paths this relay serves)."""
        self.receiver.secrets = {
            hook.path: hook.secrets
            for hook in config.webhooks
            if hook.secrets and hook.path in self._exact
        }

    def match(self, path: str) -> Webhook | None:
        """The hook a call's path (no query) belongs to, if any."""
        hook = self._exact.get(path)
        if hook is not None or not self._prefixes:
            return hook
        for hook in self._prefixes:
            if path == hook.path or path.startswith(hook.path.rstrip("/") + "/"):
                return hook
        return None

    async def receive(
        self, request: web.BaseRequest, hook: Webhook, call: CallRecord
    ) -> web.StreamResponse:
        return await self.receiver.receive(request, hook, call)

    async def start(self) -> None:
        """Open the store (creating it), start delivering (or waiting for the lease).

        A store that cannot be opened is a ``StartupError`` naming ``store.path``."""
        try:
            await self.store.run(lambda: self.store.db)
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise StartupError(f"store.path: cannot open {self.store.path}: {reason}") from None
        self.receiver.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )
        self._tasks = [
            asyncio.create_task(self.deliverer.run(), name="webhook-delivery"),
            asyncio.create_task(self._refresh_pending(), name="webhook-pending"),
            asyncio.create_task(self._probe(), name="webhook-store-probe"),
        ]

    @property
    def can_commit(self) -> bool:
        """False from a failed write to the store until a write commits again."""
        return self.faults.can_commit

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        # gather, not `await task` under suppress(CancelledError): that would also
        # swallow a cancel of close() itself.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.receiver.session is not None:
            await self.receiver.session.close()
        await asyncio.to_thread(self.store.close)

    async def _refresh_pending(self) -> None:
        while True:
            try:
                self.metrics.set_pending(await self.store.run(self.store.pending))
                self.bounds.set_backlog(await self.store.run(self.store.backlog))
            except sqlite3.Error as exc:
                self.faults.failed("pending", exc)
            await asyncio.sleep(PENDING_REFRESH)

    async def _probe(self) -> None:
        """While the store cannot commit, try a one-row write every STORE_RETRY."""
        while True:
            await asyncio.sleep(STORE_RETRY)
            if self.faults.can_commit:
                continue
            try:
                await self.store.run(self.store.probe, time.time())
            except sqlite3.Error as exc:
                self.faults.failed("probe", exc)
            else:
                self.faults.committed()
