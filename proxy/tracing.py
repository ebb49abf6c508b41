"""OpenTelemetry tracing (``[tracing]``): spans for calls, token fetches and webhooks.

Imported only when ``tracing.endpoint`` is set: with tracing off, nothing of
OpenTelemetry is loaded and a call pays one ``is None`` check.

The spans, per OpenTelemetry's HTTP semantic conventions:

- ``{method} {route}`` (server): one per proxied call, the child of a client's
  ``traceparent`` if it sent one;
- ``{method}`` (client): the upstream call, from the request head to the answer's last
  byte; its ``traceparent`` replaces the client's on the way upstream;
- ``token_fetch`` (internal): one per token fetch, the child of the call that started it
  (if a call did), linked from every call that waited for it;
- ``webhook_receive`` (server) and ``webhook_delivery`` (client), one per attempt,
  linked to its receive.

Spans are sent by a ``BatchSpanProcessor`` from its own thread, over OTLP/HTTP: a
collector that is down, slow or refusing costs a call nothing. Once its bounded queue is
full, each new span drops the oldest; drops are counted in
``vipps_proxy_trace_spans_dropped_total`` and logged at most once a minute. No
attribute carries a token, secret or key: credential sets appear by name only.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
import time
from collections.abc import Awaitable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter

from proxy import events
from proxy.config import TracingConfig

if TYPE_CHECKING:
    from proxy.webhooks.store import Event

T = TypeVar("T")

MAX_QUEUE: Final = 4096  # spans waiting for the exporter; past it the oldest is dropped
BATCH: Final = 512
EXPORT_EVERY_MS: Final = 1000
EXPORT_TIMEOUT_S: Final = 5.0  # one batch's sending, retries included
DROP_LOG_INTERVAL_S: Final = 60.0
SHUTDOWN_TIMEOUT_S: Final = 5.0
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
#: OpenTelemetry's own per-span and per-batch warnings: counted and logged by us instead.
QUIET_LOGGERS: Final = ("opentelemetry.sdk._shared_internal", "opentelemetry.exporter")

_log = structlog.get_logger("proxy.tracing")


class CallOutcome(Protocol):
    """What ``CallTrace.finish`` reads of a call (``proxy.calls.CallRecord``, which
    holds its trace: a protocol, so neither module imports the other)."""

    method: str
    route: str
    status: int
    error: str
    retried_stale_connection: bool
    credentials: str


#: The upstream call's client span under way in this task: where pool waits are noted.
_UPSTREAM: contextvars.ContextVar[trace.Span | None] = contextvars.ContextVar(
    "vipps_proxy_upstream_span", default=None
)


class Tracing:
    """One process's tracer provider, exporter and drop counter."""

    def __init__(self, config: TracingConfig, registry: CollectorRegistry) -> None:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self.dropped = Counter(
            "vipps_proxy_trace_spans_dropped",
            "Spans dropped because the exporter's queue was full.",
            registry=registry,
        )
        exporter = OTLPSpanExporter(
            endpoint=config.endpoint,
            headers={name: value.reveal() for name, value in config.headers.items()},
            timeout=EXPORT_TIMEOUT_S,
        )
        self.processor = _CountingProcessor(exporter, self.dropped)
        self.provider = TracerProvider(
            resource=Resource.create(
                {
                    "service.name": config.service_name,
                    # one per worker process: each exports its own spans
                    "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
                }
            ),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("vipps-proxy")
        self.propagator = TraceContextTextMapPropagator()
        #: Each credential set's latest token fetch, for the calls that wait for it.
        self.fetches: dict[str, SpanContext] = {}

    def server(self, headers: Mapping[str, str], method: str, path: str, client: str) -> CallTrace:
        """A proxied call's server span, current until ``CallTrace.finish``."""
        parent = self.propagator.extract(headers)
        span = self.tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "client.address": client,
            },
        )
        return CallTrace(self, span, otel_context.attach(trace.set_span_in_context(span)))

    async def token_fetch(self, credentials: str, fetch: Awaitable[T]) -> T:
        """``fetch`` under a ``token_fetch`` span: the set's name and the outcome only."""
        with self.tracer.start_as_current_span(
            "token_fetch",
            kind=SpanKind.INTERNAL,
            attributes={"vipps.credentials": credentials},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            self.fetches[credentials] = span.get_span_context()
            try:
                result = await fetch
            except BaseException as exc:
                span.set_attributes({"vipps.token.outcome": "error", "error.type": _kind(exc)})
                span.set_status(Status(StatusCode.ERROR))
                raise
            span.set_attribute("vipps.token.outcome", "ok")
            return result

    def delivery(self, event: Event, attempt: int) -> tuple[Event, trace.Span]:
        """A webhook delivery attempt's client span, linked to the event's receive (its
        ``traceparent`` as stored); the event to send carries the attempt's own."""
        received = trace.get_current_span(self.propagator.extract(dict(event.headers)))
        link = received.get_span_context()
        span = self.tracer.start_span(
            "webhook_delivery",
            context=otel_context.Context(),  # a trace of its own: it runs long after
            kind=SpanKind.CLIENT,
            links=[trace.Link(link)] if link.is_valid else None,
            attributes={"vipps.webhook.event_id": event.id, "vipps.webhook.attempt": attempt},
        )
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, trace.set_span_in_context(span))
        return replace(
            event, headers=(*_without_trace_context(event.headers), *carrier.items())
        ), span

    @staticmethod
    def delivered(span: trace.Span, status: int, error: str) -> None:
        """The attempt's answer (0: none) and its error reason; the span ends."""
        if status:
            span.set_attribute("http.response.status_code", status)
        if error:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    @staticmethod
    def pool_wait(waiting: bool) -> None:
        """The upstream pool's ``on_wait``: the call's client span notes the wait for a
        free connection (``pool_wait``) and its end (``pool_connection``)."""
        span = _UPSTREAM.get()
        if span is not None:
            span.add_event("pool_wait" if waiting else "pool_connection")

    async def close(self) -> None:
        """Send what is queued, for at most ``SHUTDOWN_TIMEOUT_S``; never hangs a stop."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trace-shutdown")
        try:
            done = asyncio.get_running_loop().run_in_executor(pool, self.provider.shutdown)
            await asyncio.wait_for(asyncio.shield(done), SHUTDOWN_TIMEOUT_S)
        except TimeoutError:
            pass
        finally:
            pool.shutdown(wait=False)


class CallTrace:
    """One call's server span and the upstream client span under way."""

    __slots__ = ("_attached", "_tracing", "client", "span")

    def __init__(self, tracing: Tracing, span: trace.Span, attached: object) -> None:
        self._tracing = tracing
        self.span = span
        self._attached = attached
        self.client: trace.Span | None = None

    def upstream(self, method: str, host: str, port: int, headers: Any) -> None:
        """A client span for the upstream call; its ``traceparent`` goes in ``headers``
        (a ``CIMultiDict``), replacing whatever the client sent. A span already under
        way is the first attempt, whose 401 a fresh token is answering."""
        if self.client is not None:
            self.client.set_attribute("http.response.status_code", 401)
            self._end_client("401")
        self.client = self._tracing.tracer.start_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "server.address": host,
                "server.port": port,
            },
        )
        _UPSTREAM.set(self.client)
        for name in (TRACEPARENT, TRACESTATE):
            headers.popall(name, None)
        self._tracing.propagator.inject(headers, trace.set_span_in_context(self.client))

    def stamp(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A received webhook's headers as stored: its ``traceparent`` is this span's, so
        that each delivery attempt can link to the receive."""
        carrier: dict[str, str] = {}
        self._tracing.propagator.inject(carrier, trace.set_span_in_context(self.span))
        return [*_without_trace_context(headers), *carrier.items()]

    def received(self, result: str, event_id: str) -> None:
        """A webhook's verification and storage result, and its event id."""
        self.span.set_attributes(
            {"vipps.webhook.result": result, "vipps.webhook.event_id": event_id}
        )

    def waited_for_token(self, credentials: str) -> None:
        """This call waited for the set's token fetch: a link to its span."""
        fetch = self._tracing.fetches.get(credentials)
        if fetch is not None:
            self.span.add_link(fetch)

    def finish(self, call: CallOutcome, status: int) -> dict[str, str]:
        """End the spans with what the call's log line says; its ids for that line."""
        span = self.span
        attributes: dict[str, Any] = {"http.response.status_code": status}
        if call.route.startswith("/"):  # a route's prefix, not the proxy's own answers
            attributes["http.route"] = call.route
            span.update_name(f"{call.method} {call.route}")
        if call.credentials:
            attributes["vipps.credentials"] = call.credentials
        if call.error:
            attributes["error.type"] = call.error
        span.set_attributes(attributes)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        if self.client is not None:
            if call.status:  # the upstream's, relayed
                self.client.set_attribute("http.response.status_code", call.status)
            self.client.set_attribute(
                "vipps.retried_stale_connection", call.retried_stale_connection
            )
        failed = str(call.status) if call.status >= 400 else ""  # semconv: a client's 4xx too
        self._end_client(call.error or failed)
        span.end()
        otel_context.detach(self._attached)  # type: ignore[arg-type]
        ids = span.get_span_context()
        return {"trace_id": f"{ids.trace_id:032x}", "span_id": f"{ids.span_id:016x}"}

    def _end_client(self, error: str = "") -> None:
        if self.client is not None:
            if error and self.client.is_recording():
                self.client.set_attribute("error.type", error)
                self.client.set_status(Status(StatusCode.ERROR))
            self.client.end()
            self.client = None
            _UPSTREAM.set(None)


class _CountingProcessor(BatchSpanProcessor):
    """OpenTelemetry's batch processor, counting the spans its full queue drops."""

    def __init__(self, exporter: OTLPSpanExporter, dropped: Counter) -> None:
        super().__init__(
            exporter,
            max_queue_size=MAX_QUEUE,
            max_export_batch_size=BATCH,
            schedule_delay_millis=EXPORT_EVERY_MS,
            export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
        )
        self._dropped = dropped
        self._unlogged = 0
        self._logged_at = -DROP_LOG_INTERVAL_S

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled and self._full():
            self._dropped.inc()
            self._unlogged += 1
            now = time.monotonic()
            if now - self._logged_at >= DROP_LOG_INTERVAL_S:
                _log.warning(events.TRACE_SPANS_DROPPED, dropped=self._unlogged)
                self._unlogged, self._logged_at = 0, now
        super().on_end(span)

    def _full(self) -> bool:
        queue = getattr(self._batch_processor, "_queue", None)
        return queue is not None and len(queue) >= MAX_QUEUE


def _without_trace_context(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in (TRACEPARENT, TRACESTATE)]


def _kind(exc: BaseException) -> str:
    return exc.__class__.__name__


__all__ = ["CallTrace", "Tracing"]
