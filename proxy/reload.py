"""Reloading the config without a restart: on SIGHUP, or when a file it names changed.

``Reloader`` is the one owner of reloading for an app. Every ``reload_interval``
seconds it reads the config file and every file the config names (``Config.files``:
``${file:...}``, ``*_file`` keys, certificates) and compares their contents' hashes,
not their times: a Kubernetes Secret swapped by its ``..data`` symlink counts.
``request()`` (SIGHUP) reloads at once. Reloads run one at a time.

A reload builds a whole new snapshot (``ProxyState``) beside the one serving and then
swaps the app's one reference to it: calls under way finish with the snapshot they
began with, new calls get the new one. Nothing is changed before the swap, so a reload
refused at any step (a bad file, a key error, a refused token) leaves the old config
serving and logs one ``config_reload_failed`` line naming the key or the cause.

What carries over: a credential set whose settings are all equal keeps its token cache
(no fetch); a changed or new one fetches a token with its new settings *before* the
swap, and a refused fetch refuses the reload. The upstream pool (its connections and
limits) stays. The outbound SSL context is rebuilt only when ``[tls]`` or one of its
files changed; it serves new upstream connections. The listener's context stays, and
from the swap on hands every new handshake to a context made from the renewed
certificate, key or client CA; open connections stay open. The webhook relay stays,
but verifies with the new config's webhook secrets from the swap on (a rotation).

What needs a restart, named once in a ``reload_needs_restart`` line while the rest
applies: ``RESTART_KEYS`` below, and ``webhooks`` for a changed ``[[webhooks]]`` (its
secrets aside) or ``[store]``. They are compared with what runs (the config the process
started with), not with the previous file: a key changed and then changed back needs
nothing, and a reload while one still differs names it again. The new snapshot's config
keeps the running values of the keys in ``RUNNING_KEYS`` (and TLS and ``client_ca`` on
or off as they started), so what reads it sees what runs; the rule against exposing
credentials to public addresses is judged on that config, not on the file alone.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, replace
from typing import Any, Final, Protocol

import structlog

from proxy import events
from proxy.config import (
    Config,
    ConfigError,
    Credentials,
    ServerConfig,
    check_exposure,
    file_digests,
    load_config,
)
from proxy.errors import ProxyError
from proxy.logs import set_level
from proxy.startup import StartupError
from proxy.state import ProxyState, build_state
from proxy.tls import inbound_context, outbound_context
from proxy.tokens import TokenProvider
from proxy.upstream import UpstreamPool

#: Seconds a token cache the new config dropped lives on, for calls still using it.
RETIRE_AFTER: Final = 120.0

#: Keys whose new value only a restart applies, each with how to read it.
RESTART_KEYS: Final[tuple[tuple[str, Callable[[Config], Any]], ...]] = (
    ("server.host", lambda c: c.server.host),
    ("server.port", lambda c: c.server.port),
    ("server.workers", lambda c: c.server.workers),
    ("server.header_timeout", lambda c: c.server.header_timeout),
    ("server.shutdown_timeout", lambda c: c.server.shutdown_timeout),
    ("server.tls_cert", lambda c: bool(c.server.tls_cert)),  # TLS turned on or off
    ("server.client_ca", lambda c: bool(c.server.client_ca)),  # client certificates on/off
    ("log.format", lambda c: c.log.format),
    ("server.admin_host", lambda c: c.server.admin_host),
    ("server.admin_port", lambda c: c.server.admin_port),
    ("tracing", lambda c: c.tracing),  # the tracer provider lives as long as the process
    ("webhooks", lambda c: (_hooks_but_secrets(c), c.store, _callback_clients(c))),
)

#: Settings a running process keeps from its start, whatever a reloaded file says.
RUNNING_KEYS: Final = {
    "server": (
        "host",
        "port",
        "workers",
        "header_timeout",
        "shutdown_timeout",
        "admin_host",
        "admin_port",
    ),
    "log": ("format",),
}

Digests = dict[str, str]

_log = structlog.get_logger("proxy.reload")


def as_running(started: Config, loaded: Config) -> Config:
    """``loaded`` with the values of ``RUNNING_KEYS`` the process ``started`` with, TLS
    and ``client_ca`` on or off as they started, and judged as it will run: a file that
    moves ``host`` to loopback, or turns on a guard only a restart turns on, cannot open
    a listener that stays beyond loopback to public addresses without a guard."""
    config = loaded
    for section, names in RUNNING_KEYS.items():
        kept = {name: getattr(getattr(started, section), name) for name in names}
        config = replace(config, **{section: replace(getattr(config, section), **kept)})
    config = replace(config, server=_switches_as_started(started.server, config.server))
    check_exposure(config.server, "server")
    return config


def _switches_as_started(started: ServerConfig, server: ServerConfig) -> ServerConfig:
    """``server`` with TLS and ``client_ca`` on or off as ``started``: a reload renews
    their files, but the listener's verify mode is set once (an SNI swap keeps it)."""
    if bool(server.tls_cert) != bool(started.tls_cert):
        server = replace(server, tls_cert=started.tls_cert, tls_key=started.tls_key)
    if bool(server.client_ca) != bool(started.client_ca):
        server = replace(server, client_ca=started.client_ca)
    return server


class Reloadable(Protocol):
    """What a reloader reads and swaps of its app (``proxy.app.ProxyApp`` is one; a
    protocol, so that the app that owns a reloader is not imported back here)."""

    state: ProxyState
    pool: UpstreamPool
    inbound_tls: ssl.SSLContext | None

    def token_provider(
        self, creds: Credentials, config: Config, upstream_ssl: ssl.SSLContext
    ) -> TokenProvider: ...


class ReloadRefused(Exception):
    """The new config cannot be served; ``str()`` names the key or the cause."""


class Reloader:
    """Reloads ``app``'s config from its file: on ``request()`` or a file that changed."""

    def __init__(self, app: Reloadable) -> None:
        self.app = app
        config = app.state.config
        self.path = config.source
        self._started = config  # what runs, for the keys only a restart changes
        self._applied = dict(config.digests)  # the files the serving config was made of
        self._seen = dict(self._applied)  # the files as the last check found them
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retired: list[TokenProvider] = []

    def start(self) -> None:
        """Watch the files, if the config came from a file and ``reload_interval`` > 0."""
        interval = self.app.state.config.server.reload_interval
        if self.path and interval > 0 and (self._watch is None or self._watch.done()):
            self._watch = asyncio.create_task(self._watch_files(), name="config-watch")

    def request(self) -> None:
        """Reload as soon as possible (SIGHUP); safe to call from a signal handler."""
        self._spawn(self.reload("signal"))

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._watch] if self._watch else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(p.close() for p in self._retired))

    async def reload(self, trigger: str) -> bool:
        """Load the config file again and serve it; False if it was refused."""
        async with self._lock:
            old = self.app.state
            found = await asyncio.to_thread(file_digests, old.config.files)
            self._seen = found
            try:
                loaded = await asyncio.to_thread(load_config, self.path)
                config = as_running(self._started, loaded)
                now = dict(config.digests)
                self._seen = {**found, **now}
                inbound = inbound_context(config.server)  # every certificate loads
                state = await self._build(old, config, now)
            except (ConfigError, StartupError, ReloadRefused) as exc:
                self._refused(trigger, str(exc))
                return False
            except Exception:  # a bug of ours: refused too, and the watch goes on
                _log.exception(events.INTERNAL_ERROR, during="config reload")
                self._refused(trigger, "internal_error")
                return False
            self._reload_listener(old.config, config, now, inbound)
            settings = self._changed_settings(old.config, config, now)  # before the swap
            self._swap(old, state, now)
            self._report(trigger, old.config, loaded, settings)
            return True

    # ------------------------------------------------------------------ building

    async def _build(self, old: ProxyState, config: Config, now: Digests) -> ProxyState:
        """The new snapshot, nothing shared with the old one changed; a token cache it
        made holds a token fetched with its new settings."""
        outbound = old.upstream_ssl
        if self._changed(old.config.tls, config.tls, _tls_files(config), now):
            outbound = outbound_context(config.tls)
        old.redactor.learn(config.secrets)  # before any line could hold a new secret
        return build_state(
            config,
            self.app.pool,
            metrics=old.metrics,
            redactor=old.redactor,
            placeholder=old.placeholder,
            upstream_ssl=outbound,
            tokens=await self._tokens(old, config, outbound),
            webhooks=old.webhooks,  # a changed [[webhooks]] needs a restart
        )

    async def _tokens(
        self, old: ProxyState, config: Config, outbound: ssl.SSLContext
    ) -> dict[str, TokenProvider]:
        """A token cache per bearer set: the old one for equal settings, else a new one
        that has fetched a token. Any fetch refused: every new one closed, and refused."""
        names = sorted({n for r in config.routes if r.auth == "bearer" for n in r.credentials})
        tokens: dict[str, TokenProvider] = {}
        fresh: list[TokenProvider] = []
        for name in names:
            kept = old.tokens.get(name)
            if kept is not None and kept.creds == config.credentials[name]:
                tokens[name] = kept
            else:
                tokens[name] = self.app.token_provider(config.credentials[name], config, outbound)
                fresh.append(tokens[name])
        results = await asyncio.gather(*(p.get() for p in fresh), return_exceptions=True)
        failed = [
            p.creds.name
            for p, r in zip(fresh, results, strict=True)
            if isinstance(r, BaseException)
        ]
        if failed:
            await asyncio.gather(*(p.close() for p in fresh))
            for result in results:  # a bug or a cancel is not a refused token
                if isinstance(result, BaseException) and not isinstance(result, ProxyError):
                    raise result
            raise ReloadRefused(
                f"credentials.{failed[0]}: no token could be fetched with the new settings"
                + (f" (nor for {', '.join(failed[1:])})" if failed[1:] else "")
            )
        return tokens

    def _changed(self, old: Any, new: Any, paths: Iterable[str], now: Digests) -> bool:
        """``old`` and ``new`` settings differ, or one of their files' contents did."""
        return old != new or any(self._applied.get(p) != now.get(p) for p in paths)

    # ------------------------------------------------------------------ swapping

    def _swap(self, old: ProxyState, state: ProxyState, now: Digests) -> None:
        """Serve ``state`` from now on; what the old snapshot alone held retires."""
        if state.upstream_ssl is not old.upstream_ssl:
            for provider in state.tokens.values():
                provider.use_tls(state.upstream_ssl)
        self.app.state = state  # the swap: new calls read this one
        if state.webhooks is not None:
            state.webhooks.use_secrets(state.config)
        if state.config.log.level != old.config.log.level:
            set_level(state.config.log.level)
        self._applied = now
        kept = set(map(id, state.tokens.values()))
        dropped = [p for p in old.tokens.values() if id(p) not in kept]
        if dropped:
            self._retired.extend(dropped)
            self._spawn(self._retire(dropped))
        self.start()  # reload_interval may have been turned on

    def _reload_listener(
        self, old: Config, new: Config, now: Digests, fresh: ssl.SSLContext | None
    ) -> None:
        """A renewed certificate, key or client CA: from the next handshake on, the
        listener hands each new connection to a context made from the new files (its
        SNI callback, which runs for every handshake, with or without a name);
        connections already open keep theirs."""
        listening = self.app.inbound_tls
        server = new.server
        if listening is None or fresh is None:
            return
        files = tuple(p for p in (server.tls_cert, server.tls_key, server.client_ca) if p)
        before = (old.server.tls_cert, old.server.tls_key, old.server.client_ca)
        after = (server.tls_cert, server.tls_key, server.client_ca)
        if self._changed(before, after, files, now):
            listening.sni_callback = _handshakes_with(fresh)

    async def _retire(self, providers: list[TokenProvider]) -> None:
        await asyncio.sleep(RETIRE_AFTER)
        for provider in providers:
            self._retired.remove(provider)
        await asyncio.gather(*(p.close() for p in providers))

    # ------------------------------------------------------------------ reporting

    def _refused(self, trigger: str, cause: str) -> None:
        metrics = self.app.state.metrics
        metrics.config_reloads.labels("error").inc()
        _log.error(events.CONFIG_RELOAD_FAILED, trigger=trigger, error=cause, config=self.path)

    def _report(self, trigger: str, old: Config, new: Config, settings: list[str]) -> None:
        metrics = self.app.state.metrics
        metrics.config_reloads.labels("ok").inc()
        metrics.last_reload_success.set(time.time())
        restart = [key for key, read in RESTART_KEYS if read(self._started) != read(new)]
        if restart:
            _log.warning(events.RELOAD_NEEDS_RESTART, keys=restart)
        _log.info(
            events.CONFIG_RELOADED,
            trigger=trigger,
            routes=_changed_names(_by_prefix(old), _by_prefix(new)),
            credentials=_changed_names(old.credentials, new.credentials),
            settings=settings,
        )

    def _changed_settings(self, old: Config, new: Config, now: Digests) -> list[str]:
        """The names of the server, tls and log keys whose value or file changed."""
        names = []
        for section in ("server", "tls", "log"):
            before, after = getattr(old, section), getattr(new, section)
            for item in fields(after):
                value = getattr(after, item.name)
                files = (value,) if isinstance(value, str) and value in new.files else ()
                if self._changed(getattr(before, item.name), value, files, now):
                    names.append(f"{section}.{item.name}")
        return names

    # ------------------------------------------------------------------ watching

    async def _watch_files(self) -> None:
        """Every ``reload_interval`` seconds: reload if a file's content changed."""
        while (interval := self.app.state.config.server.reload_interval) > 0:
            await asyncio.sleep(interval)
            watched = self.app.state.config.files
            found = await asyncio.to_thread(file_digests, watched)
            if found != {p: self._seen.get(p) for p in watched}:
                await self.reload("file")

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _by_prefix(config: Config) -> dict[str, Any]:
    return {route.prefix: route for route in config.routes}


def _changed_names(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Names added, removed or changed: names only, never a value."""
    return sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))


def _handshakes_with(
    context: ssl.SSLContext,
) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]:
    def pick(connection: ssl.SSLObject, _name: str | None, _listening: ssl.SSLContext) -> None:
        connection.context = context

    return pick


def _hooks_but_secrets(config: Config) -> Any:
    """``[[webhooks]]`` less their secrets, which a reload applies."""
    return tuple(replace(hook, secrets=()) for hook in config.webhooks)


def _callback_clients(config: Config) -> Any:
    """``allow_clients`` as the relay's eCom callback paths took it at start."""
    callbacks = any(hook.kind == "ecom-callback" for hook in config.webhooks)
    return config.server.allow_clients if callbacks else None


def _tls_files(config: Config) -> tuple[str, ...]:
    tls = config.tls
    return tuple(p for p in (tls.ca_bundle, tls.client_cert, tls.client_key) if p)
