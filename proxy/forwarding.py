"""Forwarding one call: body in, upstream request, answer streamed back.

The only retry: an upstream 401 for a call that carried our token, whose body was small
enough to hold, is replayed once with a fresh token. Everything else goes out once;
Vipps writes are idempotent only by the client's own ``Idempotency-Key``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import aiohttp
import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from proxy import events
from proxy.config import Credentials, Route
from proxy.errors import BadGateway, BadRequest, GatewayTimeout, PayloadTooLarge, ProxyError
from proxy.headers import response_headers as clean_response_headers
from proxy.headers import upstream_request_headers
from proxy.state import ProxyState
from proxy.tokens import Token

PAYLOAD_TOO_LARGE: Final = "payload_too_large"
REPLAYABLE_BODY: Final = 64 * 1024  # every ordinary Vipps call fits; larger ones stream
NO_BODY_STATUSES: Final = frozenset({204, 304})
SKIP_AUTO_HEADERS: Final = frozenset(
    {hdrs.USER_AGENT, hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE}
)

_log = structlog.get_logger("proxy.forwarding")


@dataclass
class CallRecord:
    """What the call's log line and metrics report; filled in as the call goes."""

    request_id: str
    method: str
    path: str
    client: str
    route: str = ""
    upstream: str = ""
    status: int = 0
    token: str = "none"
    bytes_in: int = 0
    bytes_out: int = 0
    error: str = ""
    replayed: bool = False
    credentials: str = ""


@dataclass(frozen=True)
class RouteTarget:
    """A route's upstream, taken apart once so each call only joins strings."""

    scheme: str
    host: str
    port: int | None
    base_path: str
    timeout: aiohttp.ClientTimeout

    @classmethod
    def of(cls, route: Route) -> RouteTarget:
        up = route.upstream
        return cls(
            scheme=up.scheme,
            host=up.raw_host or "",
            port=up.explicit_port,
            base_path=up.raw_path.rstrip("/"),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=route.connect_timeout, sock_read=route.read_timeout
            ),
        )

    def url(self, raw_path: str) -> URL:
        """The upstream URL with the client's raw path and query, never re-encoded."""
        path, _, query = raw_path.partition("?")
        return URL.build(
            scheme=self.scheme,
            host=self.host,
            port=self.port,
            path=self.base_path + path,
            query_string=query,
            encoded=True,
        )


def upstream_error(route: Route, exc: BaseException) -> ProxyError:
    """The one place that turns aiohttp's client errors into our 502 and 504."""
    where = route.upstream.host
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return GatewayTimeout(f"connecting to {where} timed out", reason="connect_timeout")
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return GatewayTimeout(f"{where} did not answer in time", reason="read_timeout")
    if isinstance(exc, TimeoutError):
        return GatewayTimeout(f"{where} did not answer in time", reason="timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return BadGateway(f"cannot connect to {where}", reason="connect_failed")
    return BadGateway(
        f"{where} broke the connection or answered malformed HTTP",
        reason=f"upstream_{exc.__class__.__name__}",
    )


def auto_headers_to_skip(headers: CIMultiDict[str]) -> frozenset[str] | None:
    """What aiohttp must not add: None when the client sent all of it already.

    aiohttp adds Accept, Accept-Encoding, User-Agent and Content-Type unless told to
    skip them, and honouring a skip list copies and sorts the headers on every call.
    When the client sent all four there is nothing to add, and no list is needed.
    """
    for name in SKIP_AUTO_HEADERS:
        if name not in headers:
            return SKIP_AUTO_HEADERS
    return None


class Forwarder:
    """Sends calls for the routes of one app."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.targets = {r.prefix: RouteTarget.of(r) for r in state.config.routes}
        self.max_body = state.config.server.max_body_bytes

    async def forward(
        self, request: web.Request, route: Route, creds: Credentials | None, call: CallRecord
    ) -> web.StreamResponse:
        target = self.targets[route.prefix]
        url = target.url(request.raw_path)
        body, replayable = await self._body(request, call)
        tokens = self.state.tokens[creds.name] if route.auth == "bearer" and creds else None
        for attempt in (1, 2):
            token = None
            if tokens is not None:
                # A held token is used without a detour through a coroutine.
                token = tokens.current()
                fetched = False
                if token is None:
                    token, fetched = await tokens.get()
                call.token = "fetched" if fetched else "cached"
            headers = upstream_request_headers(
                request.headers.items(), route, creds, token.value.reveal() if token else None
            )
            if token is not None and attempt == 2:
                call.replayed = True
            try:
                upstream = await self.state.client().request(
                    request.method,
                    url,
                    headers=headers,
                    data=body if replayable else self._stream(request, call),
                    timeout=target.timeout,
                    allow_redirects=False,
                    skip_auto_headers=auto_headers_to_skip(headers),
                    ssl=self.state.upstream_ssl,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._not_sent(route, call, exc) from None
            if upstream.status == 401 and token is not None and creds is not None:
                fresh_token_may_help = self._token_rejected(creds, token)
                if replayable and attempt == 1 and fresh_token_may_help:
                    upstream.release()
                    continue
            return await self._relay(request, upstream, route, call)
        raise AssertionError("unreachable: the second attempt always returns")

    def _not_sent(self, route: Route, call: CallRecord, exc: BaseException) -> ProxyError:
        """Our error for a failed upstream call; a streamed body over the limit is a 413."""
        error = upstream_error(route, exc)
        if isinstance(error, BadGateway) and call.error == PAYLOAD_TOO_LARGE:
            return PayloadTooLarge(
                f"the body is larger than {self.max_body} bytes", reason=PAYLOAD_TOO_LARGE
            )
        return error

    def _token_rejected(self, creds: Credentials, token: Token) -> bool:
        self.state.metrics.token_rejections.labels(creds.name).inc()
        _log.warning(events.TOKEN_REJECTED, credentials=creds.name)
        return self.state.tokens[creds.name].invalidate(token)

    async def _body(self, request: web.Request, call: CallRecord) -> tuple[bytes | None, bool]:
        """The whole body if small enough to replay; else (None, False) to stream it."""
        length = request.content_length
        if self.max_body and length is not None and length > self.max_body:
            raise PayloadTooLarge(f"the body is larger than {self.max_body} bytes")
        if not request.body_exists:
            return None, True
        if length is not None and length <= REPLAYABLE_BODY:
            try:
                body = await request.read()
            except (aiohttp.ClientError, ConnectionError):
                raise BadRequest("the request body ended early", reason="client_body") from None
            call.bytes_in = len(body)
            return body, True
        return None, False

    async def _stream(self, request: web.Request, call: CallRecord) -> AsyncIterator[bytes]:
        """The client's body, chunk by chunk as it arrives, counted and capped."""
        async for chunk in request.content.iter_any():
            call.bytes_in += len(chunk)
            if self.max_body and call.bytes_in > self.max_body:
                call.error = PAYLOAD_TOO_LARGE
                raise PayloadTooLarge(f"the body is larger than {self.max_body} bytes")
            yield chunk

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        route: Route,
        call: CallRecord,
    ) -> web.StreamResponse:
        """Stream the upstream's answer to the client; after headers, faults abort."""
        call.status = upstream.status
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=clean_response_headers(upstream.raw_headers, call.request_id),
        )
        try:
            await response.prepare(request)
            if request.method != hdrs.METH_HEAD and upstream.status not in NO_BODY_STATUSES:
                content = upstream.content
                if content.is_eof():  # a small answer is whole by now: no iterator
                    chunk = content.read_nowait()
                    if chunk:
                        await response.write(chunk)
                        call.bytes_out += len(chunk)
                else:
                    async for chunk in content.iter_any():
                        await response.write(chunk)
                        call.bytes_out += len(chunk)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            self._abort(request, route, call, exc)
        finally:
            # Not read to the end (HEAD, abort, cancellation): the connection is not reused.
            if upstream.content.is_eof():
                upstream.release()
            else:
                upstream.close()
        return response

    def _abort(
        self, request: web.Request, route: Route, call: CallRecord, exc: BaseException
    ) -> None:
        """The answer started and cannot be finished: cut the client's connection."""
        client_gone = isinstance(exc, ConnectionError) and not isinstance(exc, aiohttp.ClientError)
        call.error = "client_disconnected" if client_gone else _abort_reason(exc)
        self.state.metrics.upstream_errors.labels(route.name, call.error).inc()
        if request.transport is not None:
            request.transport.abort()


def _abort_reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.SocketTimeoutError | TimeoutError):
        return "read_timeout_mid_body"
    return "upstream_reset_mid_body"
