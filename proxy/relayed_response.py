"""The upstream's answer on the client's connection: its head as received, less hop-by-hop.

aiohttp's ``StreamResponse`` makes a head of its own: it adds ``Server``, ``Date`` and
``Content-Type: application/octet-stream``, drops a 304's ``Content-Length`` and encodes
every value as UTF-8, so obs-text from the upstream would arrive changed. A
``RelayedResponse`` keeps aiohttp's body writer (framing, flow control, keep-alive) and
writes the head itself: the upstream's status, reason and fields as bytes, plus only what
the client's hop needs (``X-Request-Id``, and the framing and ``Connection`` of this hop)
and what RFC 9110 asks of it: a ``Date`` when the upstream sent none (§6.6.1), no
``Content-Length`` on a 204 (§8.6).

Interim answers (1xx other than 101) go to an HTTP/1.1 client before the final one, as
RFC 9110 §15.2 asks of a proxy; HTTP/1.0 has none.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import HttpVersion, HttpVersion10, HttpVersion11, hdrs, web
from aiohttp.abc import AbstractStreamWriter

from proxy.aiohttp_seam import OwnHeadResponse, RawResponseMessage, http_date
from proxy.headers import response_fields


class RelayedResponse(OwnHeadResponse):
    """An upstream answer for the client, head bytes unchanged."""

    def __init__(self, head: RawResponseMessage, request_id: str) -> None:
        super().__init__(status=head.code)
        self._first_line_rest = b" %d %s\r\n" % (head.code, _reason(head))
        raw = head.raw_headers
        if head.code == 204:  # no body, so no length (RFC 9110 §8.6)
            raw = tuple((k, v) for k, v in raw if k.lower() not in _FRAMING)
        self._fields = response_fields(raw, request_id)
        if hdrs.DATE not in head.headers:  # an origin with a clock must send one (§6.6.1)
            self._fields += b"Date: %s\r\n" % http_date().encode()
        length = head.headers.get(hdrs.CONTENT_LENGTH)
        self._length = int(length) if length is not None and not head.chunked else None

    def frame(
        self, writer: AbstractStreamWriter, version: HttpVersion, keep_alive: bool, empty: bool
    ) -> bool:
        """This hop's framing and keep-alive; nothing else is added."""
        hop = b""
        if empty:  # HEAD, 204, 304: the fields speak of a body not sent
            pass
        elif self._length is not None:  # relayed as the upstream sent it
            writer.length = self._length
        elif version == HttpVersion11:
            writer.enable_chunking()
            hop = b"Transfer-Encoding: chunked\r\n"
        else:  # HTTP/1.0: the close ends the body
            keep_alive = False
        if not keep_alive and version == HttpVersion11:
            hop += b"Connection: close\r\n"
        elif keep_alive and version == HttpVersion10:
            hop += b"Connection: keep-alive\r\n"
        self._fields += hop
        return keep_alive

    def head_bytes(self, version: HttpVersion) -> bytes:
        """Held as aiohttp's ``StreamWriter.write_headers`` holds its own: it goes out with
        the first body bytes (one send for an answer already whole), at the end, or at
        ``send_head()``."""
        return b"HTTP/%d.%d" % version + self._first_line_rest + self._fields + b"\r\n"


def interim_relay(request: web.BaseRequest) -> Callable[[RawResponseMessage], None] | None:
    """What writes the upstream's interim answers to this client; None for HTTP/1.0."""
    if request.version != HttpVersion11:
        return None
    transport = request.transport

    def relay(head: RawResponseMessage) -> None:
        if transport is not None and not transport.is_closing():
            # a 1xx has no body, so no framing fields (RFC 9110 §8.6, RFC 9112 §6.1)
            raw = [(k, v) for k, v in head.raw_headers if k.lower() not in _FRAMING]
            fields = response_fields(raw)
            transport.write(b"HTTP/1.1 %d %s\r\n%s\r\n" % (head.code, _reason(head), fields))

    return relay


_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


def _reason(head: RawResponseMessage) -> bytes:
    """The reason phrase's bytes: aiohttp's parser decoded them as UTF-8 with
    ``surrogateescape``, which this undoes exactly."""
    return head.reason.encode("utf-8", "surrogateescape")
