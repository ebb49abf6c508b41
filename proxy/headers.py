"""Header policy as data: which headers cross the proxy, and which it injects.

Everything here is a pure function over header lists, so it can be tested without a
socket. Names are compared lower-cased against precomputed frozensets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from aiohttp import hdrs
from multidict import CIMultiDict

from proxy.config import Credentials, Route

Headers = Iterable[tuple[str, str]]


def _lower(*names: str) -> frozenset[str]:
    return frozenset(n.lower() for n in names)


#: RFC 9110 §7.6.1 connection-specific fields, plus the de-facto ones, never forwarded.
HOP_BY_HOP: Final = _lower(
    hdrs.CONNECTION,
    hdrs.KEEP_ALIVE,
    "Proxy-Connection",
    hdrs.PROXY_AUTHENTICATE,
    hdrs.PROXY_AUTHORIZATION,
    hdrs.TE,
    hdrs.TRAILER,
    hdrs.TRANSFER_ENCODING,
    hdrs.UPGRADE,
)

#: Credentials a client may send; removed before ours go in.
CLIENT_CREDENTIALS: Final = _lower(
    hdrs.AUTHORIZATION, "Ocp-Apim-Subscription-Key", "client_id", "client_secret"
)

#: Request headers the proxy itself answers or sets: `Host` comes from the upstream URL,
#: the framing (`Content-Length`, `Transfer-Encoding`) from the body the proxy sends,
#: `Expect: 100-continue` is answered by the proxy (a forwarded one would make the
#: upstream wait for a second 100 that never comes).
REQUEST_DROP: Final = HOP_BY_HOP | _lower(hdrs.HOST, hdrs.CONTENT_LENGTH, hdrs.EXPECT)
#: What an authenticated route removes: also every credential the client sent.
AUTHENTICATED_DROP: Final = REQUEST_DROP | CLIENT_CREDENTIALS
MERCHANT_SERIAL_NUMBER: Final = "Merchant-Serial-Number"
SUBSCRIPTION_KEY: Final = "Ocp-Apim-Subscription-Key"
REQUEST_ID: Final = "X-Request-Id"

#: ... and when we send our Merchant-Serial-Number, the client's too.
AUTHENTICATED_MSN_DROP: Final = AUTHENTICATED_DROP | _lower(MERCHANT_SERIAL_NUMBER)
#: Response headers that are about the upstream connection, not the message.
RESPONSE_DROP: Final = HOP_BY_HOP
#: ... and the upstream's request id, when ours replaces it.
RESPONSE_ID_DROP: Final = RESPONSE_DROP | _lower(REQUEST_ID)


#: What a `Connection` option never removes: the framing and the authority are the
#: message's, not the hop's (a dropped length once let a body ride as a request).
NEVER_CONNECTION_NAMED: Final = _lower(hdrs.HOST, hdrs.CONTENT_LENGTH, hdrs.TRANSFER_ENCODING)


def _tokens(value: str) -> Iterator[str]:
    return (t.strip().lower() for t in value.split(",") if t.strip())


def filtered(headers: Headers, drop: frozenset[str]) -> list[tuple[str, str]]:
    """``headers`` in order, repeats kept, less ``drop`` and the Connection-named ones
    (never ``NEVER_CONNECTION_NAMED``; what the proxy adds comes after, out of reach).

    One pass over the headers; a second one over what was kept only when a
    `Connection` field names something not already dropped (rare).
    """
    kept = []
    named: set[str] | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == "connection":
            named = named or set()
            named.update(_tokens(value))
        if lower not in drop:
            kept.append((name, value))
    if named and not named <= drop:
        named -= NEVER_CONNECTION_NAMED
        kept = [(k, v) for k, v in kept if k.lower() not in named]
    return kept


def upstream_request_headers(
    headers: Headers,
    route: Route,
    creds: Credentials | None,
    token: str | None,
    host: str | None = None,
) -> CIMultiDict[str]:
    """What goes to the upstream: the client's headers, cleaned, plus our credentials.

    The client's own credentials (and its Merchant-Serial-Number, when we send ours)
    are dropped in the one pass, so ours are appended rather than looked up and set.
    ``host``, the upstream's authority, goes first as its ``Host``.
    """
    first = [(hdrs.HOST, host)] if host else []
    if route.auth == "none" or creds is None:
        return CIMultiDict(first + filtered(headers, REQUEST_DROP))  # hop-by-hop dropped only
    msn = creds.merchant_serial_number
    kept = first + filtered(headers, AUTHENTICATED_MSN_DROP if msn else AUTHENTICATED_DROP)
    if route.auth == "bearer" and token is not None:
        kept.append((hdrs.AUTHORIZATION, f"Bearer {token}"))
    elif route.auth == "client-credentials":
        kept.append(("client_id", creds.client_id.reveal()))
        kept.append(("client_secret", creds.client_secret.reveal()))
    if route.subscription_key and creds.subscription_key:  # an oauth2 set may have none
        kept.append((SUBSCRIPTION_KEY, creds.subscription_key.reveal()))
    if msn:
        kept.append((MERCHANT_SERIAL_NUMBER, msn))
    out = CIMultiDict(kept)
    for name, value in creds.system_headers:
        if not any(v.strip() for v in out.getall(name, ())):  # SDKs send blanks
            out[name] = value
    return out


def response_fields(raw: Iterable[tuple[bytes, bytes]], request_id: str | None = None) -> bytes:
    """The upstream's answer fields for the client, as wire bytes: each ``name: value``
    line as received (latin-1 round-trips every byte), less hop-by-hop ones.

    With ``request_id``, the upstream's own ``X-Request-Id`` gives way to it.
    """
    drop = RESPONSE_DROP if request_id is None else RESPONSE_ID_DROP
    kept = filtered([(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw], drop)
    if request_id is not None:
        kept.append((REQUEST_ID, request_id))
    if not kept:
        return b""
    return ("\r\n".join(map(": ".join, kept)) + "\r\n").encode("latin-1")
