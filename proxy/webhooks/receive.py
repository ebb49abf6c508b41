"""``Receiver``: the inbound handler for webhook and callback paths.

A Vipps webhook is verified before anything is stored (401 problem+json otherwise); a
body over 64 KiB gets 413; past a hook's ``Bounds``, 503 or 429. The 2xx goes back only
once the event is committed to the store and the store is still the file its path
names (deleted or replaced: 503, and the store is reopened at its path). A hook's
secrets are read per call from ``secrets`` (a reload replaces them); any of them
verifies. eCom callbacks carry no signature: they obey ``allow_clients``
(and the hook's ``allow_from``), and their ``Authorization`` (the app's own
``authToken``) is kept for the app to check. A ``callbackPrefix`` ending in ``/`` makes
Vipps call ``{prefix}//v2/...``: that doubled slash counts as one. eCom's
``POST .../shippingDetails`` and ``DELETE .../v2/consents/...`` want the app's answer,
so they are proxied to it at once, within 10 s, and never stored; any other method on
them gets 405.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import orjson
import structlog
from aiohttp import hdrs, web

from proxy import events
from proxy.access import Allowlist
from proxy.calls import CallRecord
from proxy.config import Webhook
from proxy.errors import (
    BadGateway,
    BadRequest,
    GatewayTimeout,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
    StoreFull,
    StoreUnavailable,
    TooManyCallbacks,
    WebhookUnauthorized,
)
from proxy.headers import RESPONSE_DROP, filtered
from proxy.inbound import check_request, continue_body
from proxy.routing import decode_unreserved, normalise_path, refuse_fragment
from proxy.secret import Secret
from proxy.webhooks.bounds import Bounds
from proxy.webhooks.deliver import (
    DELIVERY_DROP,
    EVENT_ID,
    NO_AUTO_HEADERS,
    callback_rest,
    delivery_url,
)
from proxy.webhooks.faults import StoreFaults
from proxy.webhooks.metrics import WebhookMetrics
from proxy.webhooks.store import Store
from proxy.webhooks.verify import SignatureError, signed_target, verify

MAX_BODY: Final = 64 * 1024
BODY_TIMEOUT: Final = 20.0  # seconds for the whole body of one event (and body_timeout per gap)
# The eCom API guide's merchant-endpoint table: "Get shipping details ... 10-second
# timeout" (vippsas/vipps-ecom-api a2a3ebd, vipps-ecom-api.md); consent removal has no
# timeout of its own there, and other callbacks get 3 s ("Callbacks").
SYNC_TIMEOUT: Final = 10.0
_ORDER_ID: Final = re.compile(r"/v2/payments/([^/?]+)")
_log = structlog.get_logger("proxy.webhooks")


class StoreMoved(Exception):
    """The store's path no longer names the file the event went into."""


class Receiver:
    """Takes events in for the relay; ``wake`` tells the deliverer one is stored."""

    def __init__(
        self,
        store: Store,
        metrics: WebhookMetrics,
        allowlists: dict[str, Allowlist],
        wake: Callable[[], None],
        bounds: Bounds,
        faults: StoreFaults,
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        self.store = store
        self.bounds = bounds
        self.faults = faults
        self.body_timeout = body_timeout  # [server] body_timeout: the longest gap
        self.metrics = metrics
        self.allowlists = allowlists
        self.wake = wake
        #: Each vipps-webhook path's secrets as the serving config has them.
        self.secrets: dict[str, tuple[Secret, ...]] = {}
        self.session: aiohttp.ClientSession | None = None  # for the synchronous paths

    async def receive(
        self, request: web.BaseRequest, hook: Webhook, call: CallRecord
    ) -> web.StreamResponse:
        call.route = hook.path
        if hook.kind == "ecom-callback":
            self.allowlists[hook.path].check(call.client)
        check_request(request)
        refuse_fragment(request.raw_path)
        rest = callback_rest(hook, call.path)
        if rest and normalise_path(rest) != decode_unreserved(rest):
            # deliver_to + rest: a dot segment would reach the app outside deliver_to
            raise BadRequest("the path leaves the callback prefix", reason="path_traversal")
        if hook.kind == "ecom-callback" and (wanted := _synchronous_method(rest)):
            if request.method != wanted:
                raise MethodNotAllowed(
                    f"Vipps calls this path with {wanted}", reason="method", allow=wanted
                )
            return await self._synchronous(request, hook, call)
        if request.method != hdrs.METH_POST:
            raise MethodNotAllowed("webhooks are POST only", reason="method", allow="POST")
        body = await self._body(request, hook, call)
        if hook.kind == "vipps-webhook":
            self._verify(request, hook, body)
        key = _ordering_key(hook, call.path, body)
        self._admit(hook, call.client)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        if call.trace is not None:  # tracing on: the deliveries' link to this receive
            headers = call.trace.stamp(headers)
        try:
            event_id, new = await self.store.run(
                self._add,
                hook=hook.path,
                path=request.raw_path,
                method=request.method,
                headers=headers,
                body=body,
                ordering_key=key,
                now=time.time(),
            )
        except (sqlite3.Error, StoreMoved) as exc:  # not stored: Vipps (or eCom) tries again
            self.faults.failed("add" if isinstance(exc, sqlite3.Error) else "file_check", exc)
            self.bounds.release(hook)
            self._received(hook, "store_failed", key)
            raise StoreUnavailable("the event could not be stored; try again") from None
        self.faults.committed()
        if new:
            self.bounds.committed(hook)
        else:
            self.bounds.release(hook)
        result = "accepted" if new else "duplicate"
        self._received(hook, result, key, event_id)
        if call.trace is not None:
            call.trace.received(result, event_id)
        if new:
            self.wake()
        call.status = 200
        return web.Response(status=200, headers={EVENT_ID: event_id})

    def _admit(self, hook: Webhook, client: str) -> None:
        try:
            self.bounds.admit(hook, client, time.time())
        except (StoreFull, TooManyCallbacks) as err:
            self.metrics.received.labels(hook.path, err.reason).inc()
            raise

    def _add(self, **event: Any) -> tuple[str, bool]:
        """``Store.add``, then the check that the path still names the file written
        (on the store's thread): an event in a deleted file is never acknowledged."""
        found = self.store.add(**event)
        if not self.store.same_file():
            self.store.reopen(moved=True)
            raise StoreMoved("the store file was deleted or replaced; reopened at its path")
        return found

    async def _body(self, request: web.BaseRequest, hook: Webhook, call: CallRecord) -> bytes:
        length = request.content_length
        if length is not None and length > MAX_BODY:
            self._received(hook, "too_large")
            raise PayloadTooLarge(f"a webhook body is at most {MAX_BODY} bytes")
        await continue_body(request)
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BODY_TIMEOUT
        try:
            while True:
                async with asyncio.timeout_at(min(deadline, loop.time() + self.body_timeout)):
                    chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_BODY:
                    self._received(hook, "too_large")
                    raise PayloadTooLarge(f"a webhook body is at most {MAX_BODY} bytes")
                chunks.append(chunk)
        except TimeoutError:
            raise RequestTimeout(
                "the body did not arrive in time", reason="client_body_timeout"
            ) from None
        call.bytes_in = size
        return b"".join(chunks)

    def _verify(self, request: web.BaseRequest, hook: Webhook, body: bytes) -> None:
        host, target = signed_target(
            hook.public_url, request.headers.get(hdrs.HOST, ""), request.raw_path
        )
        try:
            verify(
                self.secrets.get(hook.path, hook.secrets),
                request.headers,
                body,
                method=request.method,
                host=host,
                path_and_query=target,
                max_age=hook.max_age,
                now=time.time(),
            )
        except SignatureError as err:
            self._received(hook, err.reason)
            raise WebhookUnauthorized(err.detail, reason=err.reason) from None

    def _received(self, hook: Webhook, result: str, key: str = "", event_id: str = "") -> None:
        self.metrics.received.labels(hook.path, result).inc()
        log = _log.info if result in ("accepted", "duplicate") else _log.warning
        log(
            events.WEBHOOK_RECEIVED,
            path=hook.path,
            result=result,
            reference=key or None,
            event_id=event_id or None,
        )

    async def _synchronous(
        self, request: web.BaseRequest, hook: Webhook, call: CallRecord
    ) -> web.Response:
        """Proxy a call whose answer Vipps needs straight to the app; never stored."""
        assert self.session is not None
        body = await self._body(request, hook, call)
        headers = filtered(
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            DELIVERY_DROP,
        )
        url = delivery_url(hook, request.raw_path)
        call.upstream = str(hook.deliver_to)
        try:
            async with self.session.request(
                request.method,
                url,
                data=body,
                headers=headers,
                skip_auto_headers=NO_AUTO_HEADERS,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=SYNC_TIMEOUT),
            ) as answer:
                content = await answer.read()
        except TimeoutError:
            raise GatewayTimeout("the app did not answer in time", reason="read_timeout") from None
        except aiohttp.ClientError as exc:
            reason = f"upstream_{exc.__class__.__name__}"
            raise BadGateway("the app could not be reached", reason=reason) from None
        kept = filtered(answer.headers.items(), RESPONSE_DROP | {"content-length"})
        call.status, call.bytes_out = answer.status, len(content)
        self._received(hook, "proxied")
        return web.Response(status=answer.status, body=content, headers=kept)


def _synchronous_method(rest: str) -> str:
    """The one method Vipps uses on a synchronous eCom path (eCom v2's callbacks:
    ``POST {shippingDetailsPrefix}/v2/payments/{orderId}/shippingDetails``,
    ``DELETE {consentRemovalPrefix}/v2/consents/{userId}``); "" for any other path."""
    path = rest.partition("?")[0]
    if path.endswith("/shippingDetails"):
        return hdrs.METH_POST
    return hdrs.METH_DELETE if "/v2/consents/" in path else ""


def _ordering_key(hook: Webhook, path: str, body: bytes) -> str:
    """The payment an event belongs to: eCom's orderId in the path, else the body's
    ``reference`` (ePayment) or ``orderId``; "" when there is none."""
    if hook.kind == "ecom-callback" and (found := _ORDER_ID.search(callback_rest(hook, path))):
        return found.group(1)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(doc, dict):
        for name in ("reference", "orderId"):
            value = doc.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)[:200]
    return ""
