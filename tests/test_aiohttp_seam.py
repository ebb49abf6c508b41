"""The seam to aiohttp's internals (``proxy.aiohttp_seam``) holds: every private or
undocumented piece of aiohttp it relies on is still there with the shape it relies on,
and no other module of the package touches one.

An aiohttp release that moves or renames a piece fails ``test_aiohttp_still_has`` for
that piece, its message naming it and saying what the proxy needs it for. The checker
itself is tested on test-local copies with a piece taken away.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage, StreamWriter
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from proxy import aiohttp_seam

PACKAGE = Path(__file__).parents[1] / "proxy"
SEAM = PACKAGE / "aiohttp_seam.py"


@dataclass(frozen=True)
class Piece:
    """One piece of aiohttp the seam relies on: ``attr`` of what ``owner`` names."""

    owner: str  # a key of the ``owners`` fixture: a class, or an instance made fresh
    attr: str
    why: str
    #: the parameters it is called with (or calls ours with), all there and in this order
    params: tuple[str, ...] | None = None
    coroutine: bool = False

    @property
    def name(self) -> str:
        return f"{self.owner}.{self.attr}"


PIECES = (
    *(
        Piece("aiohttp.client_proto.ResponseHandler", attr, "the upstream pool's connections")
        for attr in ("should_close", "writing_paused", "read_timeout")
    ),
    Piece(
        "aiohttp.client_proto.ResponseHandler",
        "data_received",
        "the pool's connections watch each answer head's bytes",
        ("self", "data"),
    ),
    Piece(
        "aiohttp.client_proto.ResponseHandler",
        "set_response_params",
        "each upstream call's parser settings",
        (
            "self",
            "skip_payload",
            "read_until_eof",
            "auto_decompress",
            "read_timeout",
            "read_bufsize",
        ),
    ),
    *(
        Piece("aiohttp.client_proto.ResponseHandler", attr, "the upstream pool", params)
        for attr, params in (
            ("read", ("self",)),
            ("start_timeout", ("self",)),
            ("set_exception", ("self", "exc")),
            ("is_connected", ("self",)),
            ("close", ("self",)),
        )
    ),
    *(
        Piece("StreamWriter()", attr, "a head held to go out with the first body bytes")
        for attr in ("_headers_buf", "_headers_written", "output_size", "length")
    ),
    Piece("StreamWriter()", "send_headers", "RelayedResponse.send_head()", ()),
    Piece("StreamWriter()", "enable_chunking", "a streamed body's framing", ()),
    *(
        Piece(
            "aiohttp.web.StreamResponse",
            attr,
            "an answer whose head is the upstream's bytes",
            ("self",),
            coroutine=True,
        )
        for attr in ("_prepare_headers", "_write_headers")
    ),
    *(
        Piece("web.StreamResponse()", attr, "an answer whose head is the upstream's bytes")
        for attr in ("_req", "_payload_writer", "_keep_alive", "_must_be_empty_body")
    ),
    *(
        Piece(
            "aiohttp.web.ServerRunner",
            attr,
            "the proxy's start-up and clean-up in its runner",
            ("self",),
            coroutine=True,
        )
        for attr in ("_make_server", "_cleanup_server")
    ),
    Piece("aiohttp.web.Server", "__call__", "the proxy's own connection handler", ("self",)),
    *(
        Piece(
            "aiohttp.web.Server",
            attr,
            "a client connection admitted or refused when accepted",
            ("self", "handler", first),
        )
        for attr, first in (("connection_made", "transport"), ("connection_lost", "exc"))
    ),
    *(
        Piece("web.Server()", attr, "connections counted; the handler made as aiohttp makes it")
        for attr in ("_connections", "_kwargs", "_loop")
    ),
    Piece(
        "aiohttp.web_protocol.RequestHandler",
        "handle_error",
        "a request the parser refused, answered the proxy's way",
        ("self", "request", "status", "exc", "message"),
    ),
    Piece("RequestHandler()", "_loop", "a client that stops reading is timed"),
    *(
        Piece("web.TCPSite()", attr, "a TLS listener whose handshakes are bounded")
        for attr in (
            "_ssl_context",
            "_runner",
            "_server",
            "_host",
            "_port",
            "_backlog",
            "_reuse_address",
            "_reuse_port",
            "_bound_port",
        )
    ),
    Piece("aiohttp.ClientSession()", "_retry_connection", "token fetches are never resent"),
    Piece("aiohttp.web.BaseRequest", "writer", "100 Continue written before the answer"),
    Piece("aiohttp.helpers", "rfc822_formatted_time", "a Date the upstream did not send", ()),
    *(
        Piece("aiohttp.http.RawResponseMessage", attr, "the upstream's answer head")
        for attr in ("code", "reason", "headers", "raw_headers", "chunked")
    ),
)


def fault(piece: Piece, owner: object) -> str | None:
    """What is wrong with ``piece`` on ``owner``, naming it; None: it is as relied on."""
    gone = f"aiohttp moved or renamed {piece.name} (needed for {piece.why})"
    if not hasattr(owner, piece.attr):
        return gone
    if piece.params is not None:
        value = getattr(owner, piece.attr)
        if not callable(value):
            return f"{gone}: it is no longer callable"
        params = tuple(inspect.signature(value).parameters)
        if tuple(p for p in params if p in piece.params) != piece.params:
            return f"{gone}: it takes ({', '.join(params)}), not ({', '.join(piece.params)})"
    if piece.coroutine and not inspect.iscoroutinefunction(getattr(owner, piece.attr)):
        return f"{gone}: it is no longer a coroutine function"
    return None


@pytest.fixture
async def owners() -> AsyncIterator[dict[str, object]]:
    """Each owner a piece names: classes as they are, instances made as aiohttp makes them."""

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    loop = asyncio.get_running_loop()
    server = web.Server(handler)
    runner = web.ServerRunner(server)
    await runner.setup()
    session = aiohttp.ClientSession()
    try:
        yield {
            "aiohttp.client_proto.ResponseHandler": ResponseHandler,
            "StreamWriter()": StreamWriter(ResponseHandler(loop), loop),
            "aiohttp.web.StreamResponse": web.StreamResponse,
            "web.StreamResponse()": web.StreamResponse(),
            "aiohttp.web.ServerRunner": web.ServerRunner,
            "aiohttp.web.Server": web.Server,
            "web.Server()": server,
            "aiohttp.web_protocol.RequestHandler": RequestHandler,
            "RequestHandler()": server(),
            "web.TCPSite()": web.TCPSite(runner, "127.0.0.1", 0),
            "aiohttp.ClientSession()": session,
            "aiohttp.web.BaseRequest": web.BaseRequest,
            "aiohttp.helpers": importlib.import_module("aiohttp.helpers"),
            "aiohttp.http.RawResponseMessage": RawResponseMessage,
        }
    finally:
        await session.close()
        await runner.cleanup()


@pytest.mark.parametrize("piece", PIECES, ids=lambda p: p.name)
async def test_aiohttp_still_has(piece: Piece, owners: dict[str, object]) -> None:
    assert fault(piece, owners[piece.owner]) is None, fault(piece, owners[piece.owner])


def test_the_seams_bases_are_aiohttps_own_classes() -> None:
    """The classes the seam hands out are aiohttp's, with the bases relied on."""
    assert aiohttp_seam.ResponseConnection is ResponseHandler, "ResponseHandler moved"
    assert issubclass(ResponseHandler, asyncio.Protocol), "ResponseHandler: not a Protocol"
    assert issubclass(aiohttp_seam.ClientConnectionHandler, RequestHandler)
    assert issubclass(aiohttp_seam.ClientConnectionServer, web.Server)
    assert issubclass(aiohttp_seam.HandshakeBoundSite, web.TCPSite)
    assert issubclass(aiohttp_seam.OwnHeadResponse, web.StreamResponse)
    for refusal in (BadStatusLine, LineTooLong):
        assert issubclass(refusal, HttpProcessingError), f"{refusal.__name__}'s base changed"


def test_aiohttp_starts_an_answer_with_the_two_head_hooks() -> None:
    """``OwnHeadResponse`` relies on ``StreamResponse._start`` calling both hooks."""
    start = inspect.getsource(web.StreamResponse._start)
    for hook in ("_prepare_headers", "_write_headers"):
        assert f"self.{hook}()" in start, f"StreamResponse._start no longer calls {hook}"


def test_aiohttp_sends_a_held_head_with_the_first_body_bytes() -> None:
    """``hold_head`` relies on the writer sending ``_headers_buf`` when not yet written."""
    write = inspect.getsource(StreamWriter.write)
    assert "self._headers_buf and not self._headers_written" in write, (
        "StreamWriter.write no longer sends _headers_buf with the first body bytes"
    )


# The checker, on test-local copies with a piece taken away


async def test_the_checker_names_an_attribute_gone(owners: dict[str, object]) -> None:
    writer = owners["StreamWriter()"]
    piece = next(p for p in PIECES if p.attr == "_headers_buf")
    del writer._headers_buf  # type: ignore[attr-defined]
    message = fault(piece, writer)
    assert message is not None
    assert "StreamWriter()._headers_buf" in message
    assert "a head held to go out with the first body bytes" in message


def test_the_checker_names_a_method_whose_parameters_changed() -> None:
    class Renamed(RequestHandler):
        def handle_error(  # type: ignore[override]
            self, request: web.BaseRequest, code: int = 500
        ) -> web.StreamResponse:
            raise NotImplementedError

    piece = next(p for p in PIECES if p.attr == "handle_error")
    message = fault(piece, Renamed)
    assert message is not None
    assert "aiohttp.web_protocol.RequestHandler.handle_error" in message
    assert "(self, request, code)" in message


def test_the_checker_names_a_hook_no_longer_a_coroutine() -> None:
    class Plain(web.ServerRunner):
        def _make_server(self) -> Any:
            return None

    piece = next(p for p in PIECES if p.attr == "_make_server")
    message = fault(piece, Plain)
    assert message is not None
    assert "aiohttp.web.ServerRunner._make_server" in message
    assert "coroutine" in message


def test_the_checker_passes_what_is_there(owners: dict[str, object]) -> None:
    piece = next(p for p in PIECES if p.attr == "_headers_buf")
    assert fault(piece, owners["StreamWriter()"]) is None


# No module but the seam touches a private piece of aiohttp

#: aiohttp's documented modules; every other one is reached through the seam.
PUBLIC_MODULES = frozenset({"aiohttp", "aiohttp.web", "aiohttp.hdrs", "aiohttp.abc"})
#: Type aliases aiohttp documents for handlers and middlewares.
TYPING_MODULES = frozenset({"aiohttp.typedefs"})
#: Private names only aiohttp has: touched outside the seam on any object, they are
#: aiohttp's. (Names the proxy's own classes use too, such as ``_loop`` or ``_port``,
#: are caught only on a subclass of an aiohttp class, below.)
AIOHTTP_ONLY = frozenset(
    {
        "_headers_buf",
        "_headers_written",
        "_prepare_headers",
        "_write_headers",
        "_req",
        "_payload_writer",
        "_keep_alive",
        "_must_be_empty_body",
        "_make_server",
        "_cleanup_server",
        "_connections",
        "_kwargs",
        "_retry_connection",
        "_ssl_context",
        "_bound_port",
        "_reuse_address",
        "_reuse_port",
        "_start",
    }
)


def outside_the_seam() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p != SEAM]


def private_imports(tree: ast.AST) -> list[str]:
    """aiohttp modules imported that are not its documented API."""
    found = []
    allowed = PUBLIC_MODULES | TYPING_MODULES
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("aiohttp")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiohttp"):
            names = [node.module or ""]
            if node.module == "aiohttp":  # ``from aiohttp import client_proto``
                names += [f"aiohttp.{a.name}" for a in node.names if a.name.islower()]
        else:
            continue
        found += [n for n in names if n not in allowed and n.rpartition(".")[2] != "hdrs"]
    return found


def private_attributes(tree: ast.AST) -> list[str]:
    """``x._name`` and methods ``_name`` for a name only aiohttp has."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in AIOHTTP_ONLY:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
            node.name in AIOHTTP_ONLY or node.name == "handle_error"
        ):
            found.append(f"line {node.lineno}: def {node.name}")
    return found


def test_no_module_but_the_seam_imports_a_private_aiohttp_module() -> None:
    offenders = {
        str(p.relative_to(PACKAGE.parent)): found
        for p in outside_the_seam()
        if (found := private_imports(ast.parse(p.read_text(), str(p))))
    }
    assert not offenders, f"import these through proxy/aiohttp_seam.py: {offenders}"


def test_no_module_but_the_seam_touches_a_private_aiohttp_name() -> None:
    offenders = {
        str(p.relative_to(PACKAGE.parent)): found
        for p in outside_the_seam()
        if (found := private_attributes(ast.parse(p.read_text(), str(p))))
    }
    assert not offenders, f"reach these through proxy/aiohttp_seam.py: {offenders}"


def aiohttp_private_names(cls: type) -> set[str]:
    """The private names of the aiohttp classes ``cls`` inherits: class attributes,
    methods, slots, and what their code sets on ``self``."""
    names: set[str] = set()
    for base in cls.__mro__:
        if not base.__module__.startswith("aiohttp"):
            continue
        names |= {n for n in vars(base) if n.startswith("_") and not n.startswith("__")}
        names |= set(getattr(base, "__slots__", ()))
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):  # a compiled class: its attributes are its slots
            continue
        names |= set(re.findall(r"self\.(_[a-z]\w*)", source))
    return {n for n in names if not n.startswith("__")}


def self_attributes(cls: ast.ClassDef) -> dict[str, int]:
    """Each ``self._name`` a class's code reads, sets or defines, with a line."""
    seen: dict[str, int] = {}
    for node in ast.walk(cls):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
            and node.attr.startswith("_")
        ):
            seen.setdefault(node.attr, node.lineno)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node in cls.body:
            seen.setdefault(node.name, node.lineno)
    return seen


def subclasses_of_aiohttp() -> list[tuple[str, type, ast.ClassDef]]:
    """Each class outside the seam that inherits from aiohttp, as imported and as read."""
    found = []
    for path in outside_the_seam():
        tree = ast.parse(path.read_text(), str(path))
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.bases]
        if not classes:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = importlib.import_module(".".join(p for p in parts if p != "__init__"))
        for node in classes:
            cls = getattr(module, node.name)
            if any(b.__module__.startswith("aiohttp") for b in cls.__mro__):
                found.append((f"{module.__name__}.{node.name}", cls, node))
    return found


def test_no_subclass_outside_the_seam_touches_its_aiohttp_bases_private_names() -> None:
    """A subclass of an aiohttp class outside the seam neither uses nor overrides its
    base's private names, nor shadows one with its own attribute by chance."""
    subclasses = subclasses_of_aiohttp()
    assert any(name == "proxy.relayed_response.RelayedResponse" for name, _, _ in subclasses)
    offenders = {}
    for name, cls, node in subclasses:
        private = aiohttp_private_names(cls)
        clash = {a: line for a, line in self_attributes(node).items() if a in private}
        if clash:
            offenders[name] = clash
    assert not offenders, f"aiohttp's private names, outside proxy/aiohttp_seam.py: {offenders}"


def test_the_guard_catches_a_private_import_and_attribute() -> None:
    """The checks above, on code that breaks each rule."""
    tree = ast.parse(
        "from aiohttp.http_writer import StreamWriter\n"
        "import aiohttp.web_protocol\n"
        "from aiohttp import client_proto, web\n"
        "def f(w):\n"
        "    w._headers_buf = b''\n"
    )
    assert private_imports(tree) == [
        "aiohttp.http_writer",
        "aiohttp.web_protocol",
        "aiohttp.client_proto",
    ]
    assert private_attributes(tree) == ["line 5: ._headers_buf"]


def test_the_guard_catches_a_subclass_using_its_bases_private_name() -> None:
    source = "class Peek(web.StreamResponse):\n    def f(self):\n        return self._req\n"
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.ClassDef)
    clash = set(self_attributes(node)) & aiohttp_private_names(web.StreamResponse)
    assert clash == {"_req"}
