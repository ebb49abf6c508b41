"""The shape of a request as received: what aiohttp's parser lets through but we refuse.

aiohttp (llhttp) already rejects the classic smuggling shapes. These checks close the
gaps a gateway cares about, before anything is sent upstream: HTTP versions other than
1.0 and 1.1, ``Transfer-Encoding`` on HTTP/1.0 (whose framing would then be ambiguous
downstream), and header blocks too large in total.
"""

from __future__ import annotations

from typing import Final

from aiohttp import HttpVersion10, HttpVersion11, hdrs, web

from proxy.errors import BadRequest, HeadersTooLarge, VersionNotSupported

MAX_HEADER_BYTES: Final = 32 * 1024  # all fields together; each is also capped at 8190
SUPPORTED_VERSIONS: Final = frozenset({HttpVersion10, HttpVersion11})


def check_request(request: web.Request) -> None:
    """Raise a ProxyError for a request the proxy will not forward."""
    if request.version not in SUPPORTED_VERSIONS:
        raise VersionNotSupported("only HTTP/1.0 and HTTP/1.1 are served", reason="version")
    if request.version == HttpVersion10 and hdrs.TRANSFER_ENCODING in request.headers:
        raise BadRequest("Transfer-Encoding is not allowed in HTTP/1.0", reason="framing")
    total = sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
    if total > MAX_HEADER_BYTES:
        raise HeadersTooLarge(f"request headers exceed {MAX_HEADER_BYTES} bytes")
