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

from aiohttp import HttpVersion10, HttpVersion11, hdrs, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import RawResponseMessage, StreamWriter

from proxy.headers import response_fields


class RelayedResponse(web.StreamResponse):
    """An upstream answer for the client, head bytes unchanged."""

    def __init__(self, head: RawResponseMessage, request_id: str) -> None:
        super().__init__(status=head.code)
        self._first_line_rest = b" %d %s\r\n" % (head.code, _reason(head))
        raw = head.raw_headers
        if head.code == 204:  # no body, so no length (RFC 9110 §8.6)
            raw = tuple((k, v) for k, v in raw if k.lower() not in _FRAMING)
        self._fields = response_fields(raw, request_id)
        if hdrs.DATE not in head.headers:  # an origin with a clock must send one (§6.6.1)
            self._fields += b"Date: %s\r\n" % rfc822_formatted_time().encode()
        length = head.headers.get(hdrs.CONTENT_LENGTH)
        self._length = int(length) if length is not None and not head.chunked else None

    async def _prepare_headers(self) -> None:
        """This hop's framing and keep-alive; nothing else is added."""
        request, writer = self._req, self._payload_writer
        assert request is not None
        assert writer is not None
        keep_alive = request.keep_alive if self._keep_alive is None else self._keep_alive
        version = request.version
        hop = b""
        if self._must_be_empty_body:  # HEAD, 204, 304: the fields speak of a body not sent
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
        self._keep_alive = keep_alive
        self._fields += hop

    async def _write_headers(self) -> None:
        """Held as aiohttp's ``StreamWriter.write_headers`` holds its own: it goes out with
        the first body bytes (one send for an answer already whole), at the end, or at
        ``send_head()``."""
        request, writer = self._req, self._payload_writer
        assert request is not None
        assert isinstance(writer, StreamWriter)
        version = b"HTTP/%d.%d" % request.version
        writer._headers_buf = version + self._first_line_rest + self._fields + b"\r\n"
        writer._headers_written = False

    def send_head(self) -> None:
        """Send the head now, before any of the body is here."""
        if self._payload_writer is not None:
            self._payload_writer.send_headers()


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
