"""The shape of a request as received: what aiohttp's parser lets through but we refuse,
and our answer to what it refuses itself (``parser_refusal``).

aiohttp (llhttp) already rejects the classic smuggling shapes. These checks close the
gaps a gateway cares about, before anything is sent upstream: HTTP versions other than
1.0 and 1.1, ``Transfer-Encoding`` on HTTP/1.0 (whose framing would then be ambiguous
downstream), a transfer coding other than ``chunked`` (501, RFC 9112 §6.1: the proxy
would send its body upstream as plain chunked, the coding lost), header blocks too
large in total, and expectations other than
``100-continue``; and on a route that passes the client's own ``Authorization``, the
proxy's placeholder token there (``refuse_placeholder``). A ``100 Continue`` itself
goes out only once the call has passed every check and its body is wanted
(``continue_body``): a refused call never invites the body it will not read.
"""

from __future__ import annotations

from itertools import chain
from typing import Final

from aiohttp import HttpVersion10, HttpVersion11, hdrs, web

from proxy.aiohttp_seam import BadStatusLine, HttpProcessingError, LineTooLong, send_interim
from proxy.errors import (
    BadRequest,
    CodingNotImplemented,
    ExpectationFailed,
    HeadersTooLarge,
    ProxyError,
    VersionNotSupported,
)

MAX_HEADER_BYTES: Final = 32 * 1024  # all fields together; each is also capped at 8190
SUPPORTED_VERSIONS: Final = frozenset({HttpVersion10, HttpVersion11})
TOO_MANY_FIELDS: Final = "Too many headers received"  # aiohttp's message, over 128 fields
#: llhttp's words for a version it cannot read (``HTTP/1.2``, ``HTTP/x.y``)
BAD_VERSION: Final = ("Invalid HTTP version", "Invalid major version", "Invalid minor version")
#: llhttp's and aiohttp's words for a transfer coding they refuse (unknown, chunked not
#: last, the field twice): as any coding but chunked, not implemented
BAD_CODING: Final = (
    "Request has invalid `Transfer-Encoding`",
    "Invalid `Transfer-Encoding` header value",
    "Duplicate 'Transfer-Encoding' header found",
)
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def check_request(request: web.BaseRequest) -> None:
    """Raise a ProxyError for a request the proxy will not forward."""
    if request.version not in SUPPORTED_VERSIONS:
        raise VersionNotSupported("only HTTP/1.0 and HTTP/1.1 are served", reason="version")
    coding = request.headers.get(hdrs.TRANSFER_ENCODING)
    if coding is not None:
        if request.version == HttpVersion10:
            raise BadRequest("Transfer-Encoding is not allowed in HTTP/1.0", reason="framing")
        if coding.lower() != "chunked":
            raise _coding_refused()
    raw = request.raw_headers
    total = sum(map(len, chain.from_iterable(raw))) + 4 * len(raw)
    if total > MAX_HEADER_BYTES:
        raise HeadersTooLarge(f"request headers exceed {MAX_HEADER_BYTES} bytes")
    expect = request.headers.get(hdrs.EXPECT)
    if expect is not None and expect.lower() != "100-continue":
        raise ExpectationFailed("only Expect: 100-continue is understood", reason="expect")


def refuse_placeholder(request: web.BaseRequest, placeholder: str) -> None:
    """On a route that passes the client's own ``Authorization`` upstream, a client
    carrying the proxy's placeholder token is told so: the placeholder never leaves."""
    for value in request.headers.getall(hdrs.AUTHORIZATION, ()):
        if placeholder in value:
            raise BadRequest(
                "this route passes the client's own token upstream and has none of ours: "
                "the token from the proxy's local token endpoint is a placeholder that "
                'works only on routes with auth = "bearer"',
                reason="placeholder_token",
            )


async def continue_body(request: web.BaseRequest) -> None:
    """Invite the body a client holds back for ``Expect: 100-continue`` (HTTP/1.1)."""
    if request.version == HttpVersion11 and hdrs.EXPECT in request.headers:
        await send_interim(request, CONTINUE)  # not counted as the answer's size


def parser_refusal(exc: HttpProcessingError) -> ProxyError:
    """Our answer to a request aiohttp's parser refused: 431 for a line or a field count
    over its limits, 505 for a version it cannot read, 501 for a transfer coding, else 400.

    The parser's message quotes the offending bytes (a header line, the target): it is
    never used, in the answer or in a log; the details here are fixed phrases.
    """
    if isinstance(exc, LineTooLong) or exc.message == TOO_MANY_FIELDS:
        return HeadersTooLarge("a request line or header field, or their number, is over the limit")
    if isinstance(exc, BadStatusLine) and any(m in exc.message for m in BAD_VERSION):
        return VersionNotSupported("only HTTP/1.0 and HTTP/1.1 are served", reason="version")
    if any(m in exc.message for m in BAD_CODING):
        return _coding_refused()
    return BadRequest("the request is not well-formed HTTP/1.1")


def _coding_refused() -> CodingNotImplemented:
    return CodingNotImplemented(
        "the only transfer coding served is chunked, alone", reason="transfer_coding"
    )
