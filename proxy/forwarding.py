"""Forwarding one call: body in, upstream request, answer streamed back.

The only retries: the pool's one resend of a GET, HEAD, OPTIONS, PUT or DELETE whose
pooled connection the upstream had closed before answering (``proxy.upstream``), and an
upstream 401 that says our token was refused, for a call whose body was small enough to
hold, replayed once with a fresh token; any other 401 is relayed as it came, its reason
logged. Everything else goes out once; Vipps writes are idempotent only by the client's
own ``Idempotency-Key``.

A client's body may pause at most ``body_timeout`` seconds between two reads, held or
streamed; then the call ends with 408 (if no answer has started) and reason
``client_body_timeout``, and a streamed call's upstream connection is discarded. A
client that takes none of the answer for as long is cut (reason
``client_read_timeout``), and the upstream connection with it.

A failure is named by the side that failed, not by the exception's type (aiohttp's
``ClientConnectionResetError`` is both a client error and a ``ConnectionResetError``):
a write to the client that fails is the client's (``client_disconnected``,
``client_read_timeout``), logged but never counted in ``upstream_errors_total``; a
read of the answer that fails is the upstream's.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Final

import aiohttp
import structlog
from aiohttp import hdrs, web

from proxy import events
from proxy.calls import CallRecord
from proxy.config import Config, Credentials, Route
from proxy.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
    UpstreamBusy,
)
from proxy.headers import upstream_request_headers
from proxy.inbound import continue_body
from proxy.metrics import Metrics
from proxy.relayed_response import RelayedResponse, interim_relay
from proxy.tokenfetch import Token
from proxy.tokens import (
    MAX_REFUSAL_BODY,
    OTHER_REFUSAL,
    TOKEN_REFUSED,
    TokenProvider,
    refusal_cause,
)
from proxy.upstream import NoFreeConnection, UpstreamPool, UpstreamResponse
from proxy.upstream_connection import BadAnswer, ConnectFailed, Upstream

PAYLOAD_TOO_LARGE: Final = "payload_too_large"
CLIENT_BODY_TIMEOUT: Final = "client_body_timeout"
CLIENT_READ_TIMEOUT: Final = "client_read_timeout"
CLIENT_DISCONNECTED: Final = "client_disconnected"
#: aiohttp's writer waits for the client only once this much is buffered: a write
#: below it never waits, so needs no time limit.
WRITE_NEVER_WAITS: Final = 64 * 1024
REPLAYABLE_BODY: Final = 64 * 1024  # every ordinary Vipps call fits; larger ones stream
NO_BODY_STATUSES: Final = frozenset({204, 304})
UPSTREAM_BUSY_RETRY_AFTER: Final = 1.0  # seconds: a connection frees as soon as a call ends

_log = structlog.get_logger("proxy.forwarding")


def upstream_error(route: Route, exc: BaseException) -> ProxyError:
    """The one place that turns upstream failures (the pool's and aiohttp's client
    errors it raises) into our 502, 503 and 504."""
    where = route.upstream.host
    if isinstance(exc, NoFreeConnection):
        return UpstreamBusy(
            f"every connection to {where} stayed in use for {route.connect_timeout} s",
            retry_after=UPSTREAM_BUSY_RETRY_AFTER,
        )
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return GatewayTimeout(f"connecting to {where} timed out", reason="connect_timeout")
    if isinstance(exc, TimeoutError):  # aiohttp's SocketTimeoutError is one
        return GatewayTimeout(f"{where} did not answer in time", reason="read_timeout")
    if isinstance(exc, ConnectFailed):
        return BadGateway(f"cannot connect to {where}", reason="connect_failed")
    if isinstance(exc, BadAnswer):
        return BadGateway(f"{where} answered what is not relayed", reason="upstream_bad_answer")
    return BadGateway(
        f"{where} broke the connection or answered malformed HTTP",
        reason=f"upstream_{exc.__class__.__name__}",
    )


class Forwarder:
    """Sends calls for the routes of one config (one snapshot, ``proxy.state``)."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        tokens: Mapping[str, TokenProvider],
        upstream_ssl: ssl.SSLContext,
        pool: UpstreamPool,
    ) -> None:
        self.metrics = metrics
        self.tokens = tokens
        self.pool = pool
        self.targets = {
            r.prefix: Upstream.of(r.upstream, upstream_ssl, r.connect_timeout, r.read_timeout)
            for r in config.routes
        }
        self.max_body = config.server.max_body_bytes
        self.body_timeout = config.server.body_timeout

    async def forward(
        self, request: web.BaseRequest, route: Route, creds: Credentials | None, call: CallRecord
    ) -> web.StreamResponse:
        up = self.targets[route.prefix]
        body, replayable = await self._body(request, call)
        tokens = self.tokens[creds.name] if route.auth == "bearer" and creds else None
        for attempt in (1, 2):
            token = None
            if tokens is not None:
                # A held token is used without a detour through a coroutine.
                token = tokens.current()
                fetched = False
                if token is None:
                    token, fetched = await tokens.get()
                    if fetched and call.trace is not None:
                        call.trace.waited_for_token(tokens.creds.name)
                call.token = "fetched" if fetched else "cached"
            headers = upstream_request_headers(
                request.headers.items(),
                route,
                creds,
                token.value.reveal() if token else None,
                host=up.host_header,
            )
            if token is not None and attempt == 2:
                call.replayed = True
            if call.trace is not None:
                call.trace.upstream(request.method, up.host, up.port, headers)
            try:
                upstream = await self.pool.request(
                    up,
                    request.method,
                    request.raw_path,
                    headers,
                    body if replayable else self._stream(request, call),
                    interim=interim_relay(request),
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._not_sent(route, call, exc) from None
            self.metrics.observe_upstream(
                route.name, creds.name if creds else "none", upstream.waited
            )
            if upstream.retried:
                call.retried_stale_connection = True
            held = b""
            if upstream.status == 401 and creds is not None and route.auth != "none":
                held = await self._refusal_body(route, upstream)
                cause = refusal_cause(upstream.raw_headers, held)
                if cause == TOKEN_REFUSED and token is not None:
                    fresh_token_may_help = self._token_rejected(creds, token)
                    if replayable and attempt == 1 and fresh_token_may_help:
                        upstream.release()
                        continue
                else:  # our key or something else: a new token would not help
                    call.error = OTHER_REFUSAL if cause == TOKEN_REFUSED else cause
            return await self._relay(request, upstream, route, call, held)
        raise AssertionError("unreachable: the second attempt always returns")

    async def _refusal_body(self, route: Route, upstream: UpstreamResponse) -> bytes:
        """The start of a 401's body (all of it, for the gateway's small ones), to tell
        what was refused; relayed ahead of the rest if the 401 goes to the client."""
        held = bytearray()
        try:
            while len(held) < MAX_REFUSAL_BODY and (
                chunk := await upstream.content.read(MAX_REFUSAL_BODY - len(held))
            ):
                held += chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            upstream.close()
            raise upstream_error(route, exc) from None
        except BaseException:  # the client left meanwhile: the slot must not leave with it
            upstream.close()
            raise
        return bytes(held)

    def _not_sent(self, route: Route, call: CallRecord, exc: BaseException) -> ProxyError:
        """Our error for a failed upstream call; a streamed body over the limit is a 413,
        one that stalled is a 408."""
        if call.error == CLIENT_BODY_TIMEOUT:
            return self._body_timed_out()
        error = upstream_error(route, exc)
        if isinstance(error, BadGateway) and call.error == PAYLOAD_TOO_LARGE:
            return PayloadTooLarge(
                f"the body is larger than {self.max_body} bytes", reason=PAYLOAD_TOO_LARGE
            )
        return error

    def _body_timed_out(self) -> RequestTimeout:
        return RequestTimeout(
            f"no request body byte for {self.body_timeout:g} s", reason=CLIENT_BODY_TIMEOUT
        )

    def _token_rejected(self, creds: Credentials, token: Token) -> bool:
        self.metrics.token_rejections.labels(creds.name).inc()
        _log.warning(events.TOKEN_REJECTED, credentials=creds.name)
        return self.tokens[creds.name].invalidate(token)

    async def _body(self, request: web.BaseRequest, call: CallRecord) -> tuple[bytes | None, bool]:
        """The whole body if small enough to replay; else (None, False) to stream it."""
        length = request.content_length
        if self.max_body and length is not None and length > self.max_body:
            raise PayloadTooLarge(f"the body is larger than {self.max_body} bytes")
        if not request.body_exists:
            return None, True
        await continue_body(request)
        if length is not None and length <= REPLAYABLE_BODY:
            content = request.content
            try:
                if content.is_eof():  # the usual small call: the body came with the head
                    body = content.read_nowait()
                else:
                    body = b"".join([chunk async for chunk in self._chunks(content)])
            except (aiohttp.ClientError, ConnectionError):
                raise BadRequest("the request body ended early", reason="client_body") from None
            except _BodyStalled:
                raise self._body_timed_out() from None
            call.bytes_in = len(body)
            return body, True
        return None, False

    async def _stream(self, request: web.BaseRequest, call: CallRecord) -> AsyncIterator[bytes]:
        """The client's body, chunk by chunk as it arrives, counted and capped."""
        try:
            async for chunk in self._chunks(request.content):
                call.bytes_in += len(chunk)
                if self.max_body and call.bytes_in > self.max_body:
                    call.error = PAYLOAD_TOO_LARGE
                    raise PayloadTooLarge(f"the body is larger than {self.max_body} bytes")
                yield chunk
        except _BodyStalled:
            # The upstream call fails with this (its connection is not reused) and
            # _not_sent answers 408. An answer already started cannot become a 408:
            # the client is cut, which ends the relay and the upstream call.
            call.error = CLIENT_BODY_TIMEOUT
            if call.status and request.transport is not None:
                request.transport.abort()
            raise

    async def _chunks(self, content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
        """The body's chunks as they come, none more than ``body_timeout`` after the last."""
        while True:
            try:
                async with asyncio.timeout(self.body_timeout):
                    chunk = await content.readany()
            except TimeoutError:
                raise _BodyStalled from None
            if not chunk:
                return
            yield chunk

    async def _relay(
        self,
        request: web.BaseRequest,
        upstream: UpstreamResponse,
        route: Route,
        call: CallRecord,
        held: bytes = b"",
    ) -> web.StreamResponse:
        """Stream the upstream's answer to the client (``held``: its start, already
        read); after headers, faults abort."""
        call.status = upstream.status
        response = RelayedResponse(upstream.head, call.request_id)
        try:
            await response.prepare(request)
            if request.method != hdrs.METH_HEAD and upstream.status not in NO_BODY_STATUSES:
                if held:
                    await self._write(response, held, timed=False)
                    call.bytes_out += len(held)
                content = upstream.content
                if content.is_eof():  # a small answer is whole by now: one send, no iterator
                    chunk = content.read_nowait()
                    if chunk:
                        await self._write(response, chunk, timed=len(chunk) > WRITE_NEVER_WAITS)
                    call.bytes_out += len(chunk)
                else:
                    _send_head(response)  # the client learns of the answer without waiting
                    async for chunk in content.iter_any():
                        await self._write(response, chunk)
                        call.bytes_out += len(chunk)
        except _ClientFailed as failed:  # the client's side: logged, never the upstream's
            call.error = failed.reason
            _cut(request)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:  # reading the answer
            call.error = _abort_reason(exc)
            self.metrics.upstream_errors.labels(route.name, call.error).inc()
            _cut(request)
        finally:
            # Not read to the end (HEAD, abort, cancellation): the connection is not reused.
            upstream.release()
        return response

    async def _write(self, response: web.StreamResponse, chunk: bytes, timed: bool = True) -> None:
        """Write to the client; a failure here is the client's (``_ClientFailed``).

        Timed, the client may take none of it for ``body_timeout`` seconds: one that
        stops reading would hold its upstream connection for good. A write below
        ``WRITE_NEVER_WAITS`` into an empty buffer never waits, so needs no timer.
        """
        try:
            if timed:
                async with asyncio.timeout(self.body_timeout):
                    await response.write(chunk)
            else:
                await response.write(chunk)
        except TimeoutError:
            raise _ClientFailed(CLIENT_READ_TIMEOUT) from None
        except ConnectionError:  # aiohttp's ClientConnectionResetError is a ClientError too
            raise _ClientFailed(CLIENT_DISCONNECTED) from None


class _ClientFailed(Exception):
    """Writing the answer to the client failed: it left (``client_disconnected``) or
    took none of it for ``body_timeout`` seconds (``client_read_timeout``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _send_head(response: RelayedResponse) -> None:
    """Send the answer's head now; the client gone is its own failure."""
    try:
        response.send_head()
    except ConnectionError:
        raise _ClientFailed(CLIENT_DISCONNECTED) from None


def _cut(request: web.BaseRequest) -> None:
    """The answer started and cannot be finished: cut the client's connection."""
    if request.transport is not None:
        request.transport.abort()


class _BodyStalled(Exception):
    """The client sent no body byte for ``body_timeout`` seconds. Not a TimeoutError:
    the upstream pool reads those as an upstream that stopped taking the body."""


def _abort_reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.SocketTimeoutError | TimeoutError):
        return "read_timeout_mid_body"
    return "upstream_reset_mid_body"
