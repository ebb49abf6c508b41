"""``ProxyApp``: the handler every call meets, on aiohttp's low-level server.

Order of checks for a call: client address (403), method (405 for CONNECT and TRACE),
request shape (400/417/431/505), reserved ``/-/`` paths, client key (407), the path's
normal form (400), legacy token calls (405 unless POST), route (400/404), the route's
methods (405), credentials (403; none on a token path), then forwarding. Every call
ends in exactly one log line and one metrics update.

The proxy has one handler and its own router, so it runs on ``web.Server`` rather than
an ``Application``: no URL dispatcher, middleware chain or per-call ``Request`` with app
plumbing (about 30 µs a call). ``ProxyRunner`` (``proxy.runner``) gives it the
start-up, drain and clean-up an application runner would.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import aiohttp
import structlog
from aiohttp import hdrs, web

from proxy import events
from proxy.access import CLIENT_NOT_ALLOWED, check_client_key, peer_address
from proxy.admin import (
    ADMIN_PREFIX,
    api_admin_response,
    is_legacy_token_path,
    legacy_token_response,
    reaches_token_path,
)
from proxy.aiohttp_seam import HttpProcessingError, disable_retry
from proxy.calls import CallRecord, new_request_id, request_id
from proxy.config import Config, Credentials
from proxy.errors import (
    BadGateway,
    GatewayTimeout,
    InternalError,
    MethodNotAllowed,
    ProxyError,
    UpstreamBusy,
    problem_response,
)
from proxy.forwarding import CLIENT_DISCONNECTED
from proxy.headers import MERCHANT_SERIAL_NUMBER, REQUEST_ID
from proxy.inbound import check_request, parser_refusal, refuse_placeholder
from proxy.logs import CALL_ID
from proxy.metrics import Metrics
from proxy.redact import Redactor
from proxy.routing import pick_credentials
from proxy.state import ProxyState, build_state
from proxy.tls import outbound_context
from proxy.tokens import TokenProvider
from proxy.upstream import UpstreamPool

if TYPE_CHECKING:  # loaded only when [tracing] is on, or [[webhooks]] are set
    from proxy.tracing import Tracing
    from proxy.webhooks.service import WebhookRelay

#: Answers after which the connection is closed: the request was malformed or hostile,
#: or its client has no key (a refused peer must not keep the connection as a slot).
CLOSE_AFTER: Final = frozenset({400, 405, 407, 408, 431, 501, 505})
#: ... and a 403 for these reasons: the address itself is refused.
CLOSE_AFTER_REASONS: Final = frozenset({CLIENT_NOT_ALLOWED})
#: Methods refused with 405 before anything else is looked at.
REFUSED_METHODS: Final = frozenset({hdrs.METH_CONNECT, hdrs.METH_TRACE})
POOL_SIZE: Final = 256  # upstream connections in use at once, per upstream origin
MAX_IDLE_UPSTREAM: Final = 15.0  # seconds a pooled upstream connection may sit idle

_log = structlog.get_logger("proxy.app")


class ProxyApp:
    """The proxy for one config: its state, its upstream pool and token caches."""

    def __init__(self, config: Config, redactor: Redactor | None = None) -> None:
        """``redactor`` should be the one the process's logging uses, so that tokens
        this proxy fetches are scrubbed from every log line."""
        self.pool = UpstreamPool(limit=POOL_SIZE, max_idle=MAX_IDLE_UPSTREAM)
        metrics = Metrics()
        metrics.watch_tokens(self._token_lives)
        upstream_ssl = outbound_context(config.tls)
        webhooks: WebhookRelay | None = None
        if config.webhooks:
            from proxy.webhooks.service import WebhookRelay

            webhooks = WebhookRelay(config, metrics.registry, upstream_ssl)
        #: The config being served, swapped whole by start() (with its token caches) and
        #: by a reload; a call reads it once.
        self.state = build_state(
            config,
            self.pool,
            metrics=metrics,
            redactor=redactor or Redactor(config.secrets),
            placeholder="vipps-proxy-placeholder-" + secrets.token_urlsafe(16),
            upstream_ssl=upstream_ssl,
            tokens={},
            webhooks=webhooks,
        )
        self.draining = False  # set when shutdown begins; calls cut after this say so
        #: The listener's SSL context (``server.tls_cert``), set by ``proxy.server``.
        self.inbound_tls: ssl.SSLContext | None = None
        # A bound logger, not the module's lazy proxy: one call's line costs ~5 µs less.
        self._log = structlog.get_logger("proxy.app").bind()
        self._tokens_session: aiohttp.ClientSession | None = None
        self.tracing: Tracing | None = None  # [tracing] set: made in start(), in the worker

    async def start(self) -> None:
        """One session for token fetches and a token cache per credential set."""
        state = self.state
        if state.webhooks is not None:  # first: a store that fails to open leaves nothing open
            await state.webhooks.start()
        self._tokens_session = _tokens_session(state)
        if state.config.tracing.endpoint:  # OpenTelemetry is imported only then
            from proxy.tracing import Tracing

            self.tracing = Tracing(state.config.tracing, state.metrics.registry)
            self.pool.on_wait = self.tracing.pool_wait
            if state.webhooks is not None:
                state.webhooks.deliverer.tracing = self.tracing
        bearer_sets = {n for r in state.config.routes if r.auth == "bearer" for n in r.credentials}
        tokens = {
            name: self.token_provider(
                state.config.credentials[name], state.config, state.upstream_ssl
            )
            for name in sorted(bearer_sets)
        }
        self.state = build_state(
            state.config,
            self.pool,
            metrics=state.metrics,
            redactor=state.redactor,
            placeholder=state.placeholder,
            upstream_ssl=state.upstream_ssl,
            tokens=tokens,
            webhooks=state.webhooks,
        )

    def token_provider(
        self, creds: Credentials, config: Config, upstream_ssl: ssl.SSLContext
    ) -> TokenProvider:
        """A token cache for ``creds`` of ``config``, fetching over ``upstream_ssl``."""
        assert self._tokens_session is not None, "start() first"
        provider = TokenProvider(
            creds,
            self._tokens_session,
            self.state.metrics,  # the process's, like the redactor: every snapshot's
            self.state.redactor,
            ssl=upstream_ssl,
            insecure=not config.tls.verify,
        )
        provider.tracing = self.tracing
        return provider

    def _token_lives(self) -> Iterator[tuple[str, float]]:
        """Seconds each held token of the config serving now is still used for."""
        now = time.monotonic()
        for name, provider in self.state.tokens.items():
            token = provider.current()
            if token is not None:
                yield name, token.expires_at - now

    def prefetch(self) -> None:
        """Fetch every token in the background, once listening: the first call need not wait."""
        for provider in self.state.tokens.values():
            provider.start()

    async def close(self) -> None:
        """After the last call: stop refreshing, close every connection."""
        if self.state.webhooks is not None:
            await self.state.webhooks.close()
        await asyncio.gather(*(p.close() for p in self.state.tokens.values()))
        await self.pool.close()
        if self._tokens_session is not None:
            await self._tokens_session.close()
        if self.tracing is not None:
            await self.tracing.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every call: checks, then the proxy's own answer or a forwarded one; one log line."""
        state = self.state
        started = time.perf_counter()
        call = CallRecord(
            request_id=request_id(request.headers),
            method=request.method,
            path=request.raw_path.partition("?")[0],
            client=peer_address(request),
        )
        CALL_ID.set(call.request_id)
        if self.tracing is not None and not call.path.startswith(ADMIN_PREFIX):
            call.trace = self.tracing.server(request.headers, call.method, call.path, call.client)
        state.metrics.active += 1
        response: web.StreamResponse | None = None
        try:
            response = await _dispatch(request, state, call)
        except ProxyError as err:
            call.status = err.status
            call.error = call.error or err.reason
            if isinstance(err, BadGateway | GatewayTimeout | UpstreamBusy):
                state.metrics.upstream_errors.labels(call.route, call.error).inc()
            response = problem_response(err, call.request_id)
            if err.status in CLOSE_AFTER or err.reason in CLOSE_AFTER_REASONS:
                response.force_close()  # what follows on this connection cannot be trusted
        except asyncio.CancelledError:
            if not call.error and self.draining:
                call.error = "cut_at_shutdown"
                state.metrics.upstream_errors.labels(call.route or "none", call.error).inc()
            elif not call.error:  # the client's failure: never counted as the upstream's
                call.error = CLIENT_DISCONNECTED
            raise
        except Exception:  # a bug of ours: a problem answer, the cause in the log, no secrets
            _log.exception(events.INTERNAL_ERROR, path=call.path)
            bug = InternalError("the proxy failed to handle this call", reason="internal_error")
            call.status, call.error = bug.status, bug.reason
            response = problem_response(bug, call.request_id)
        finally:
            state.metrics.active -= 1
            if response is not None and not response.prepared:  # an answer of our own
                call.bytes_out = _body_size(response)
            self._finish(call, started)
        if not response.prepared:  # a streamed answer got its id before its headers went
            response.headers[REQUEST_ID] = call.request_id
        return response

    def refused(self, request: web.BaseRequest, exc: HttpProcessingError) -> web.Response:
        """A request aiohttp's parser refused: a problem answer, the connection closed,
        one warning line. Nothing of the request is known but its peer, and nothing of
        what the parser saw (it quotes header lines) is logged or answered."""
        started = time.perf_counter()
        call = CallRecord(
            request_id=new_request_id(), method="", path="", client=peer_address(request)
        )
        CALL_ID.set(call.request_id)
        try:
            self.state.allowlist.check(call.client)
            error = parser_refusal(exc)
        except ProxyError as forbidden:  # from outside allow_clients: as any call from there
            error = forbidden
        call.status, call.error = error.status, error.reason
        response = problem_response(error, call.request_id)
        response.headers[REQUEST_ID] = call.request_id
        call.bytes_out = _body_size(response)
        self._finish(call, started)
        response.force_close()
        return response

    def _finish(self, call: CallRecord, started: float) -> None:
        """The call's metrics and its one log line."""
        seconds = time.perf_counter() - started
        if call.route == "admin":
            self._log.debug(events.REQUEST_COMPLETED, path=call.path, status=call.status)
            return
        status = call.status or 499  # 499: the client went away before an answer
        self.state.metrics.observe_call(
            call.route or "none", call.method, status, seconds, call.bytes_in, call.bytes_out
        )
        log = self._log.warning if call.error or status >= 500 else self._log.info
        extra = {"error": call.error} if call.error else {}
        if call.replayed:
            extra["replayed"] = "true"
        if call.retried_stale_connection:
            extra["retried_stale_connection"] = "true"
        if call.trace is not None:
            extra.update(call.trace.finish(call, status))
        log(
            events.REQUEST_COMPLETED,
            method=call.method,
            path=call.path,
            status=status,
            duration_ms=round(seconds * 1000, 3),
            route=call.route or None,
            upstream=call.upstream or None,
            credentials=call.credentials or None,
            bytes_in=call.bytes_in,
            bytes_out=call.bytes_out,
            client=call.client,
            token=call.token,
            **extra,
        )


def _body_size(response: web.StreamResponse) -> int:
    """The body bytes of an answer the proxy made itself (not yet sent)."""
    body = response.body if isinstance(response, web.Response) else None
    if isinstance(body, bytes | bytearray):
        return len(body)
    return getattr(body, "size", None) or 0


def _tokens_session(state: ProxyState) -> aiohttp.ClientSession:
    """Token fetches are rare: one connection each, never pooled, never resent."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, ssl=state.upstream_ssl),
        cookie_jar=aiohttp.DummyCookieJar(),  # cookies must never pass between apps
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
    )
    # aiohttp resends GET/PUT/DELETE by itself when a pooled connection drops, even if
    # the upstream already acted on it. A token fetch is a POST and never pooled here,
    # but the switch stays off.
    disable_retry(session)
    return session


async def _dispatch(
    request: web.BaseRequest, state: ProxyState, call: CallRecord
) -> web.StreamResponse:
    relay = state.webhooks
    if relay is not None and (hook := relay.match(call.path)) is not None:
        return await relay.receive(request, hook, call)  # its own checks: signature, CIDRs
    state.allowlist.check(call.client)
    if request.method in REFUSED_METHODS:
        # CONNECT would open a tunnel; TRACE would have the upstream reflect the
        # credentials the proxy injects back to the client.
        raise MethodNotAllowed(f"{request.method} is not served by this proxy")
    check_request(request)
    if call.path.startswith(ADMIN_PREFIX):
        call.route = "admin"
        response = api_admin_response(state, request, call.path)
        call.status = response.status
        return response
    check_client_key(state.config.server.client_keys, request)
    normal = state.router.normal(request.raw_path)
    if is_legacy_token_path(normal):
        # A reserved path: answered here unless the route it falls under opts out.
        covering = state.router.match(normal)
        if covering is None or covering.local_token_endpoints:
            call.route = "legacy_token"
            if request.method != hdrs.METH_POST:
                raise MethodNotAllowed("a token is asked for with POST", allow="POST")
            call.status = 200
            return legacy_token_response(state)
    route = state.router.route(request.raw_path, normal)
    call.route, call.upstream = route.name, route.upstream_text
    if request.method not in route.methods:  # before any credential is touched
        raise MethodNotAllowed(f"{request.method} is not taken by this route", allow=route.allow)
    if reaches_token_path(route, normal):
        # local_token_endpoints = false: the client's own credentials only, never ours
        creds = None
    else:
        creds = pick_credentials(
            route, state.config.credentials, request.headers.get(MERCHANT_SERIAL_NUMBER)
        )
    call.credentials = creds.name if creds else ""
    if route.auth == "none" or creds is None:  # the client's Authorization goes upstream
        refuse_placeholder(request, state.placeholder)
    return await state.forwarder.forward(request, route, creds, call)
