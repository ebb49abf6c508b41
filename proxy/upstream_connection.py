"""One upstream connection: aiohttp's client protocol (``ResponseConnection``, from
``proxy.aiohttp_seam``) made and watched for what its parser lets pass, the answer's
head read and refused when it is not one to relay, and a streamed request body sent.

The pool (``proxy.upstream``) decides which connection a call goes out on and when one
is reused; this module is what happens on one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from typing import Final

import aiohappyeyeballs
import aiohttp
from aiohttp import hdrs
from yarl import URL

from proxy.aiohttp_seam import (
    HttpProcessingError,
    RawResponseMessage,
    ResponseConnection,
    StreamWriter,
)
from proxy.resolver import Resolver

#: What a request head may hold besides its line ends: HTAB, SP, visible ASCII, obs-text.
FIELD_BYTES: Final = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
HAPPY_EYEBALLS_DELAY: Final = 0.25  # RFC 8305's recommended wait before the next address
STATUS_END: Final = len(b"HTTP/1.1 200")  # a status line's bytes up to its code
_STATUS_LINE, _FIRST_FIELD, _INTERIM_REST = range(3)  # where a head's bytes are
Interim = Callable[[RawResponseMessage], None]
#: An origin as the pool keeps it: host, port and the TLS context (None: plain HTTP). A
#: reload with new TLS settings makes a new context, so its calls get new connections.
Key = tuple[str, int, ssl.SSLContext | None]


@dataclass(frozen=True)
class Upstream:
    """A route's upstream, taken apart once so each call only joins strings."""

    host: str
    port: int
    host_header: str
    base_path: str
    tls: ssl.SSLContext | None
    connect_timeout: float
    read_timeout: float

    @classmethod
    def of(
        cls, url: URL, ssl_context: ssl.SSLContext, connect_timeout: float, read_timeout: float
    ) -> Upstream:
        secure = url.scheme == "https"
        return cls(
            host=url.raw_host or "",
            port=url.port or (443 if secure else 80),
            host_header=url.host_port_subcomponent or "",
            base_path=url.raw_path.rstrip("/"),
            tls=ssl_context if secure else None,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )

    @property
    def key(self) -> Key:
        return (self.host, self.port, self.tls)


class ConnectFailed(aiohttp.ClientConnectionError):
    """No connection to the upstream could be made (refused, unreachable, TLS refused)."""


class MalformedAnswer(aiohttp.ClientError):
    """The upstream's answer is not HTTP/1.1 the parser accepts."""


class BadAnswer(MalformedAnswer):
    """The upstream's answer is HTTP the parser took, but not one to relay: a transfer
    coding other than chunked, a control byte in a field value, a first field line that
    starts with whitespace."""


class Connection(ResponseConnection):
    """aiohttp's client protocol, noting whether it has been pooled (so carried a call
    before), whether any byte of the current call's answer came, and whether a head's
    first field line began with whitespace.

    aiohttp's parser is lenient with answers: it reads a first field line that starts
    with whitespace (`` Content-Length: 3``) as a field, framing included, which a
    recipient must refuse (RFC 9112 §2.2), and nothing of it shows in the parsed head.
    So the byte after each head's status line is looked at as the bytes come (an
    interim head is followed to its end, where the next head starts). An obs-fold
    further down is joined into its field with a space, as §5.2 allows a proxy.
    """

    reused = False
    answered = False
    folded = False  # a head's first field line began with SP or HTAB
    _in_head = False  # the bytes coming are still those of the answer's heads
    _phase = 0  # in the head: _STATUS_LINE, _FIRST_FIELD, or _INTERIM_REST
    _status = b""  # the current head's first bytes, up to its status code
    _carry = b""  # the end of an interim head's bytes so far: a line end may be split

    def expect_answer(self) -> None:
        """A call went out: what comes next is its answer's head."""
        self.answered = self.folded = False
        self._in_head, self._phase, self._status, self._carry = True, _STATUS_LINE, b"", b""

    def data_received(
        self,
        data: bytes,
        _receive: Callable[[ResponseConnection, bytes], None] = ResponseConnection.data_received,
    ) -> None:
        self.answered = True
        if self._in_head:
            self._watch_head(data)
        _receive(self, data)

    def _watch_head(self, data: bytes) -> None:
        at, size = 0, len(data)
        while at < size:
            if self._phase == _STATUS_LINE:
                if not self._status:  # blank lines before a status line are skipped
                    while at < size and data[at] in b"\r\n":
                        at += 1
                self._status += data[at : at + STATUS_END - len(self._status)]
                line_end = data.find(b"\n", at)
                if line_end < 0:
                    return
                at, self._phase = line_end + 1, _FIRST_FIELD
            elif self._phase == _FIRST_FIELD:
                if data[at] in b" \t":
                    self.folded = True
                code = self._status[STATUS_END - 3 :]
                if code[:1] != b"1" or code == b"101":  # the final head: done
                    self._in_head = False
                    return
                self._phase, self._carry = _INTERIM_REST, b"\n"
            else:
                watched = self._carry + data[at:]
                end = head_end(watched)
                if end < 0:
                    self._carry = watched[-2:]
                    return
                data, at, size = watched, end, len(watched)  # the next head starts here
                self._phase, self._status, self._carry = _STATUS_LINE, b"", b""


def head_end(data: bytes) -> int:
    """Where the head in ``data`` ends, after its empty line (CRLF, or a bare LF as
    aiohttp's parser allows); -1 if it does not end in ``data``."""
    crlf = data.find(b"\n\r\n")
    bare = data.find(b"\n\n", 0, crlf + 2 if crlf >= 0 else len(data))
    if bare >= 0:
        return bare + 2
    return crlf + 3 if crlf >= 0 else -1


async def connect(up: Upstream, resolver: Resolver) -> Connection:
    """A new connection: every address the name has, raced RFC 8305 style (as aiohttp's
    connector does), so an unreachable IPv6 address costs 250 ms, not connect_timeout."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(up.connect_timeout):
            infos = await resolver.resolve(up.host, up.port)
            sock = await aiohappyeyeballs.start_connection(
                infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1
            )
            try:
                _, proto = await loop.create_connection(
                    lambda: Connection(loop),
                    sock=sock,
                    ssl=up.tls,
                    # as aiohttp does: a certificate never names the root's trailing dot
                    server_hostname=up.host.rstrip(".") if up.tls is not None else None,
                )
            except BaseException:
                sock.close()
                raise
    except TimeoutError:
        raise aiohttp.ConnectionTimeoutError(
            f"connecting to {up.host} took over {up.connect_timeout} s"
        ) from None
    except OSError as exc:  # refused, unreachable, name unknown, TLS refused
        raise ConnectFailed(f"cannot connect to {up.host}: {exc.__class__.__name__}") from exc
    return proto


async def read_head(
    proto: Connection, body_task: asyncio.Task[None] | None, interim: Interim | None
) -> tuple[RawResponseMessage, aiohttp.StreamReader]:
    """The final answer's head; each 1xx interim answer before it goes to ``interim``.

    The proxy never asks to switch protocols, so a 101 is a broken upstream. aiohttp
    stops the read timer when an interim answer ends; it is started again for the final
    head (unless a body is still being sent: that is timed by ``send_body``).
    """
    while True:
        try:
            head, content = await proto.read()
        except HttpProcessingError as exc:
            raise MalformedAnswer(f"the upstream answered malformed HTTP: {exc.message}") from None
        if head.code == 101:
            raise MalformedAnswer("the upstream switched protocols unasked (101)")
        relayable(head, proto.folded)
        if not 100 <= head.code < 200:
            return readable_alike(head), content
        if interim is not None:
            interim(head)
        if body_task is None or body_task.done():
            proto.start_timeout()


def readable_alike(head: RawResponseMessage) -> RawResponseMessage:
    """The final head, if every client reads it as the proxy does. aiohttp's parser is
    lenient with answers: it takes ``Content-Length : 3`` (whitespace before the colon)
    as the length, and a status of two digits. RFC 9112 §5.1 forbids relaying the
    former (recipients may frame the answer differently); neither is HTTP."""
    if head.code < 100 or any(name[-1:] in b" \t" for name, _ in head.raw_headers):
        raise MalformedAnswer("the upstream's answer head is malformed")
    return head


def relayable(head: RawResponseMessage, folded: bool) -> None:
    """Refuse a head the proxy will not relay (``BadAnswer``): a transfer coding other
    than chunked alone (its body would reach the client still coded, under a plain
    ``chunked``), a control byte in a field value (as in a request, RFC 9110 §5.5; the
    parser checks names), or a first field line that starts with whitespace (``folded``)."""
    if folded:
        raise BadAnswer("the upstream's first field line starts with whitespace")
    coding = head.headers.get(hdrs.TRANSFER_ENCODING)
    if coding is not None and (
        coding.lower() != "chunked" or len(head.headers.getall(hdrs.TRANSFER_ENCODING)) > 1
    ):
        raise BadAnswer("the upstream's answer has a transfer coding other than chunked")
    if b"".join([value for _, value in head.raw_headers]).translate(None, FIELD_BYTES):
        raise BadAnswer("a field of the upstream's answer holds a control character")


async def send_body(
    proto: ResponseConnection, writer: StreamWriter, body: AsyncIterable[bytes], stall: float
) -> None:
    """Stream a body; a failure (ours or the client's) fails the call's read too.

    The read timer runs only once the body is sent, so an upstream that stops taking
    the body is timed here: a write may wait ``stall`` seconds for room, no longer.
    """
    try:
        async for chunk in body:
            await writer.write(chunk, drain=False)
            if proto.writing_paused:
                async with asyncio.timeout(stall):
                    await writer.drain()
        async with asyncio.timeout(stall):
            await writer.write_eof()
    except TimeoutError:
        proto.set_exception(aiohttp.SocketTimeoutError("the upstream stopped taking the body"))
    except OSError as exc:
        proto.set_exception(aiohttp.ClientOSError(exc.errno, "cannot send the request body"))
    except Exception as exc:
        proto.set_exception(aiohttp.ClientConnectionError(f"the request body failed: {exc!r}"))
    # Sent or failed, the answer (which may have started early) is timed from here:
    # set_exception stops aiohttp's read timer, and an answer mid-body needs it.
    proto.start_timeout()
