"""The one seam to aiohttp's internals: every aiohttp name the proxy uses that is not
aiohttp's documented API lives here, and no other module touches one.

Verified on aiohttp 3.14.5 (the lock's; ``pyproject.toml`` allows ``>=3.14,<3.15``) and
3.13.5: there every piece below but ``TCPSite._bound_port`` (new in 3.14) is present and
the wire, upstream and forwarding tests pass, but the emulator needs 3.14's
``web.RequestKey``. ``tests/test_aiohttp_seam.py`` checks every piece and names the one
an aiohttp release moved or renamed. The names, and why each is needed:

Undocumented modules, imported here only:

- ``aiohttp.client_proto.ResponseHandler`` (``ResponseConnection``): the client's
  connection protocol, the base of the upstream pool's connections
  (``proxy.upstream_connection``), so the pool keeps aiohttp's llhttp parser, flow
  control, read time-outs and payload errors without ``ClientSession``'s per-call cost.
  The pool calls its ``data_received``, ``set_response_params(skip_payload,
  read_until_eof, auto_decompress, read_timeout, read_bufsize)``, ``read()``,
  ``start_timeout()``, ``set_exception()``, ``is_connected()``, ``close()`` and reads
  ``should_close``, ``writing_paused`` and ``read_timeout``.
- ``aiohttp.web_protocol.RequestHandler`` (``ClientConnectionHandler``): one client
  connection of the low-level server; its ``handle_error(request, status, exc,
  message)`` is where a request its parser refused is answered.
- ``aiohttp.http.StreamWriter`` and ``RawResponseMessage`` (in that module's
  ``__all__``, not in the documentation): the writer of a request or answer body, and a
  parsed answer head (``code``, ``reason``, ``headers``, ``raw_headers``, ``chunked``).
- ``aiohttp.http_exceptions.HttpProcessingError``, ``BadStatusLine``, ``LineTooLong``:
  what the parsers raise, told apart to answer 400, 431 or 505.
- ``aiohttp.helpers.rfc822_formatted_time`` (``http_date``): aiohttp's cached ``Date``.

Private attributes and methods (a leading underscore), touched here only:

- ``StreamWriter._headers_buf`` / ``_headers_written`` (``hold_head``): a head of the
  proxy's own bytes held to go out with the first body bytes, as aiohttp's
  ``write_headers`` holds its own (one send for a small call or answer).
- ``StreamResponse._prepare_headers`` / ``_write_headers``, ``_req``,
  ``_payload_writer``, ``_keep_alive``, ``_must_be_empty_body`` (``OwnHeadResponse``):
  an answer whose head is the upstream's bytes, not one aiohttp builds.
- ``ServerRunner._make_server`` / ``_cleanup_server`` (``HookedServerRunner``): the
  proxy's start and close at the points an application runner has them.
- ``web.Server.__call__``, ``connection_made`` / ``connection_lost``, ``_connections``,
  ``_kwargs``, ``_loop`` (``ClientConnectionServer``): a connection counted or refused
  the moment it is accepted, with the proxy's own handler class.
- ``RequestHandler._loop`` (``ClientConnectionHandler.call_later``).
- ``TCPSite._ssl_context``, ``_runner``, ``_server``, ``_host``, ``_port``,
  ``_backlog``, ``_reuse_address``, ``_reuse_port``, ``_bound_port``
  (``HandshakeBoundSite``): a TLS listener whose handshakes are bounded.
- ``ClientSession._retry_connection`` (``disable_retry``): aiohttp's own resend of a
  call on a dropped pooled connection, off (its ``TestClient`` does the same).
- ``BaseRequest.writer`` and ``StreamWriter.output_size`` (``send_interim``, neither in
  aiohttp's reference): a ``100 Continue`` written before the answer, not counted as
  the answer's bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import HttpVersion, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import RawResponseMessage, StreamWriter
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

__all__ = [
    "BadStatusLine",
    "ClientConnectionHandler",
    "ClientConnectionServer",
    "HandshakeBoundSite",
    "HookedServerRunner",
    "HttpProcessingError",
    "LineTooLong",
    "OwnHeadResponse",
    "RawResponseMessage",
    "ResponseConnection",
    "StreamWriter",
    "disable_retry",
    "hold_head",
    "http_date",
    "send_interim",
]

#: The upstream pool's connection protocol: aiohttp's client protocol, unchanged.
ResponseConnection = ResponseHandler


def hold_head(writer: StreamWriter, head: bytes) -> None:
    """Hold ``head`` (a whole head, its empty line included) to go out with the first
    body bytes, at ``write_eof()``, or at ``send_headers()``."""
    writer._headers_buf, writer._headers_written = head, False


def http_date() -> str:
    """Now as an HTTP date, aiohttp's (cached for the second)."""
    return rfc822_formatted_time()


def disable_retry(session: aiohttp.ClientSession) -> None:
    """Stop ``session`` resending GET/PUT/DELETE by itself when a pooled connection
    drops: the upstream may have acted on the first. aiohttp has no public switch."""
    session._retry_connection = False


async def send_interim(request: web.BaseRequest, head: bytes) -> None:
    """Write an interim answer's head (``100 Continue``) before the answer, not counted
    in the answer's size."""
    await request.writer.write(head)
    request.writer.output_size = 0


class OwnHeadResponse(web.StreamResponse):
    """A ``StreamResponse`` whose head its subclass writes itself: ``frame`` sets this
    hop's framing on the body writer, ``head_bytes`` gives the head, held as
    ``hold_head`` holds it."""

    def frame(
        self, writer: AbstractStreamWriter, version: HttpVersion, keep_alive: bool, empty: bool
    ) -> bool:
        """Set the body's framing on ``writer`` (``length``, ``enable_chunking()``);
        ``empty``: the answer has no body (HEAD, 204, 304). Returns keep-alive."""
        raise NotImplementedError

    def head_bytes(self, version: HttpVersion) -> bytes:
        """The whole head, status line to empty line, for a client of ``version``."""
        raise NotImplementedError

    async def _prepare_headers(self) -> None:
        request, writer = self._req, self._payload_writer
        assert request is not None
        assert writer is not None
        keep_alive = request.keep_alive if self._keep_alive is None else self._keep_alive
        empty = bool(self._must_be_empty_body)
        self._keep_alive = self.frame(writer, request.version, keep_alive, empty)

    async def _write_headers(self) -> None:
        request, writer = self._req, self._payload_writer
        assert request is not None
        assert isinstance(writer, StreamWriter)
        hold_head(writer, self.head_bytes(request.version))

    def send_head(self) -> None:
        """Send the head now, before any of the body is here."""
        if self._payload_writer is not None:
            self._payload_writer.send_headers()


class HookedServerRunner(web.ServerRunner):
    """aiohttp's runner for the low-level server, calling ``before_serving`` before its
    server is made and ``after_serving`` at its clean-up, where an application runner
    runs its app's start-up and clean-up."""

    async def before_serving(self) -> None:
        """Before the server is made (``setup()``)."""

    async def after_serving(self) -> None:
        """At clean-up, once the sites are stopped and calls drained."""

    async def _make_server(self) -> web.Server:
        await self.before_serving()
        return await super()._make_server()

    async def _cleanup_server(self) -> None:
        await self.after_serving()


class ClientConnectionHandler(RequestHandler):
    """One client connection of a ``ClientConnectionServer``; a request its parser
    refused goes to ``parser_refused``."""

    def parser_refused(
        self, request: web.BaseRequest, exc: HttpProcessingError
    ) -> web.StreamResponse:
        """The answer to a request aiohttp's parser refused (``exc`` says why)."""
        return super().handle_error(request, 400, exc, None)

    def call_later(self, delay: float, callback: Any) -> asyncio.TimerHandle:
        """``callback`` after ``delay`` seconds, on the connection's loop."""
        return self._loop.call_later(delay, callback)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            return self.parser_refused(request, exc)
        return super().handle_error(request, status, exc, message)


class ClientConnectionServer(web.Server):
    """aiohttp's low-level server making ``handler_class`` connections, each one offered
    to ``admit`` the moment it is accepted: refused, it is closed before a byte is read
    (``admit`` aborts its transport); ``forget`` is told when an admitted one ends."""

    handler_class: type[ClientConnectionHandler] = ClientConnectionHandler

    @property
    def connection_count(self) -> int:
        """The connections admitted and not yet ended."""
        return len(self._connections)

    def admit(self, handler: ClientConnectionHandler, transport: asyncio.Transport) -> bool:
        """Whether to serve this new connection; False: its transport is aborted."""
        return True

    def forget(self, handler: ClientConnectionHandler) -> None:
        """An admitted connection ended."""

    def __call__(self) -> ClientConnectionHandler:
        return self.handler_class(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        assert isinstance(handler, ClientConnectionHandler)
        if not self.admit(handler, transport):
            transport.abort()
            handler.force_close()  # its parser never runs; its task ends at once
            return
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        assert isinstance(handler, ClientConnectionHandler)
        self.forget(handler)
        super().connection_lost(handler, exc)


class HandshakeBoundSite(web.TCPSite):
    """aiohttp's TCP site whose TLS handshakes last at most ``handshake_timeout`` seconds.

    A client connection is counted (``max_connections``) and timed (``header_timeout``)
    only once its handshake is done; asyncio's own bound on a handshake is 60 s, so a
    client that never sends its ClientHello would hold a socket that long, uncounted.
    """

    def __init__(self, *args: object, handshake_timeout: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        if self._ssl_context is None:
            await super().start()
            return
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._handshake_timeout,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
