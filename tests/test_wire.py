"""What crosses the wire, judged by h11, a parser independent of aiohttp's (issue 11).

Clients speak raw bytes to the real proxy; the upstream is a raw asyncio server that
parses exactly what it receives with h11 and answers with scripted raw bytes. So both
sides of every claim are the bytes on a socket:

- framing: the upstream request is framed by the body the proxy sends, never by the
  client's headers (no request rides inside another, whatever ``Connection`` names);
- bytes: header values, and the reason phrase, cross unchanged both ways (obs-text too);
- answers: what the upstream sent, less hop-by-hop, plus ``X-Request-Id``; interim 1xx
  answers relayed first; an unsolicited 101 refused.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.forwarding import REPLAYABLE_BODY
from proxy.upstream import _request_head
from tests import h11_wire
from tests.conftest import (
    DEMO_MSN,
    DEMO_SUBSCRIPTION_KEY,
    ProxyFactory,
    RunningEmulator,
    RunningProxy,
    make_config,
)
from tests.h11_wire import (
    EARLY_HINTS,
    OK_ANSWER,
    Client,
    Seen,
    UpstreamFactory,
    echo_target,
    proxy_to,
    relay_one,
    request,
)
from tests.test_fault_matrix import metric

pytestmark = pytest.mark.timeout(120)  # a ceiling for a busy machine
h11_upstream = h11_wire.h11_upstream  # fixtures shared with other tests, taken by name
clients = h11_wire.clients

CLIENT_SECRET_MARK = b"client-own-credential"


# --------------------------------------------------------------------------- 1. framing


def assert_ours_once(seen: Seen, emulator: RunningEmulator) -> None:
    """Our credentials exactly once each, the client's nowhere."""
    (authorization,) = seen.values(b"Authorization")
    assert authorization.startswith(b"Bearer ")
    assert authorization[7:].decode() in emulator.state.tokens
    assert seen.values(b"Ocp-Apim-Subscription-Key") == [DEMO_SUBSCRIPTION_KEY.encode()]
    assert seen.values(b"Merchant-Serial-Number") == [DEMO_MSN.encode()]
    assert not [v for _, v in seen.headers if CLIENT_SECRET_MARK in v]


SMUGGLED_HEAD = b"POST /store HTTP/1.1\r\nHost: api.vipps.test\r\nContent-Length: 164\r\n\r\n"


async def test_connection_naming_content_length_cannot_smuggle_a_request(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """The attack in issue 11: the body (a request head) stays the body of its request,
    and the next client's call, with our credentials, is not swallowed by it."""
    upstream = await h11_upstream(echo_target)
    proxy = await proxy_to(emulator, start_proxy, upstream)
    attacker, victim = await clients(proxy), await clients(proxy)

    await attacker.send(request("POST", "/x", b"Connection: Content-Length", body=SMUGGLED_HEAD))
    first = await attacker.answer("POST")
    await victim.send(request("GET", "/victim"))
    second = await victim.answer()

    assert (first.status, first.body) == (200, b"/x %d" % len(SMUGGLED_HEAD))
    assert (second.status, second.body) == (200, b"/victim 0")
    assert [(s.method, s.target, s.body) for s in upstream.requests] == [
        (b"POST", b"/x", SMUGGLED_HEAD),
        (b"GET", b"/victim", b""),
    ]
    assert upstream.requests[0].values(b"Content-Length") == [b"%d" % len(SMUGGLED_HEAD)]
    for seen in upstream.requests:
        assert_ours_once(seen, emulator)


#: Names a client's ``Connection`` may list: framing, Host, ours, its own.
CONNECTION_TOKENS = [
    "Content-Length",
    "Transfer-Encoding",
    "Host",
    "Authorization",
    "Ocp-Apim-Subscription-Key",
    "Merchant-Serial-Number",
    "X-Request-Id",
    "X-A",
    "Content-Type",
    "Expect",
    "keep-alive",
]
BODY_METHODS = {"POST", "PUT", "PATCH"}
MAX_BODY = 200 * 1024


@dataclass
class ClientCall:
    """One request a hostile client sends, and how its body is framed."""

    method: str
    headers: list[bytes]
    body: bytes | None = field(repr=False)
    chunk: int  # 0: sent with Content-Length; else chunked in pieces of this size
    body_repr: str = ""  # what a failing example shows of the body

    def __post_init__(self) -> None:
        if self.body is not None:
            self.body_repr = f"{len(self.body)} bytes: {self.body[:40]!r}..."

    def wire(self, target: str) -> bytes:
        return request(self.method, target, *self.headers, body=self.body, chunk=self.chunk)

    @property
    def has_body(self) -> bool:
        """Whether the proxy sees a body: a chunked one, or a length above zero."""
        return self.body is not None and (self.chunk > 0 or len(self.body) > 0)

    @property
    def streamed(self) -> bool:
        """Whether the proxy streams the body rather than holding it (forwarding's rule)."""
        return self.has_body and (self.chunk > 0 or len(self.body or b"") > REPLAYABLE_BODY)


@st.composite
def client_calls(draw: st.DrawFn) -> ClientCall:
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
    size = draw(
        st.one_of(
            st.integers(0, 300),
            st.integers(REPLAYABLE_BODY - 2, REPLAYABLE_BODY + 2),
            st.integers(0, MAX_BODY),
        )
    )
    seed = draw(st.integers(0, 2**32))
    body: bytes | None = random.Random(seed).randbytes(size)  # noqa: S311 - not a secret
    if draw(st.booleans()):  # a body that is itself a request head
        body = (SMUGGLED_HEAD + (body or b""))[: max(size, len(SMUGGLED_HEAD))]
    if not body and draw(st.booleans()):
        body = None  # no body at all, rather than an empty one
    named = draw(st.lists(st.sampled_from(CONNECTION_TOKENS), max_size=4))
    headers = [b"Connection: " + ", ".join(named).encode()] if named else []
    if draw(st.booleans()):
        headers += [
            b"Authorization: Bearer " + CLIENT_SECRET_MARK,
            b"Ocp-Apim-Subscription-Key: " + CLIENT_SECRET_MARK,
        ]
    if draw(st.booleans()):
        headers += [b"X-A: 1", b"Content-Type: application/json"]
    chunk = draw(st.sampled_from([0, 0, 1, 7, 1000, 70000]))
    return ClientCall(method, draw(st.permutations(headers)), body, chunk)


def expected_answer(seen: Seen) -> bytes:
    return b"%s %d" % (seen.target, len(seen.body))


def echo_unless_head(seen: Seen) -> bytes:
    """``echo_target``; to a HEAD, its head alone, as HTTP wants."""
    if seen.method == b"HEAD":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(expected_answer(seen))
    return echo_target(seen)


def assert_framed_by_the_body(call: ClientCall, seen: Seen) -> None:
    """Framing from what the proxy sends: held, streamed or none."""
    lengths, codings = seen.values(b"Content-Length"), seen.values(b"Transfer-Encoding")
    if call.streamed:
        assert (lengths, codings) == ([], [b"chunked"])
    elif call.has_body:
        assert (lengths, codings) == ([b"%d" % len(call.body or b"")], [])
    else:
        assert (lengths, codings) == ([b"0"] if call.method in BODY_METHODS else [], [])


EXAMPLES = iter(range(1 << 30))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    connections=st.lists(st.lists(client_calls(), min_size=1, max_size=3), min_size=1, max_size=3)
)
async def test_every_client_request_arrives_upstream_once_as_sent_framed_by_its_body(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    connections: list[list[ClientCall]],
) -> None:
    """Hostile requests, pipelined and on parallel connections: h11 at the upstream sees
    each once, with its method, target and body, our credentials once, framed by its
    body; each client gets its own answer; no upstream connection has a byte left over."""
    upstream = await h11_upstream(echo_unless_head)
    proxy = await proxy_to(emulator, start_proxy, upstream)
    example = next(EXAMPLES)
    calls = {
        f"/w/{example}/{c}/{i}": call
        for c, conn in enumerate(connections)
        for i, call in enumerate(conn)
    }

    async def one_connection(c: int, conn: list[ClientCall]) -> None:
        client = await Client.open(proxy)
        try:
            targets = [f"/w/{example}/{c}/{i}" for i in range(len(conn))]
            sending = asyncio.create_task(
                client.send(b"".join(call.wire(t) for call, t in zip(conn, targets, strict=True)))
            )
            for call, target in zip(conn, targets, strict=True):
                answer = await client.answer(call.method)
                assert answer.status == 200, (target, answer)
                body = call.body or b""
                wanted = b"%s %d" % (target.encode(), len(body))
                if call.method == "HEAD":
                    assert (answer.body, answer.values(b"Content-Length")) == (
                        b"",
                        [b"%d" % len(wanted)],
                    )
                else:
                    assert answer.body == wanted
            await sending
        finally:
            await client.close()

    await asyncio.gather(*(one_connection(c, conn) for c, conn in enumerate(connections)))
    await proxy.runner.cleanup()  # every upstream connection closes: now it shows its rest
    await upstream.wait_for_ends()

    assert sorted(s.target.decode() for s in upstream.requests) == sorted(calls)
    for seen in upstream.requests:
        call = calls[seen.target.decode()]
        assert (seen.method.decode(), seen.body) == (call.method, call.body or b"")
        assert_framed_by_the_body(call, seen)
        assert_ours_once(seen, emulator)
    assert set(upstream.ends) == {"clean"}


async def test_an_upstream_connection_option_never_names_away_the_answers_length(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """The answer's Content-Length is the message's, whatever its Connection names."""
    reply = b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\nok"
    proxy = await proxy_to(emulator, start_proxy, await h11_upstream(lambda _: reply))
    client = await clients(proxy)
    await client.send(request("GET", "/x"))
    answer = await client.answer()
    assert (answer.values(b"Content-Length"), answer.body) == ([b"2"], b"ok")
    assert answer.values(b"Transfer-Encoding") == []


# --------------------------------------------------------------------------- 2. bytes


async def test_request_header_bytes_reach_the_upstream_unchanged(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """obs-text in a value (and in X-Request-Id) arrives byte for byte, not dropped."""
    upstream = await h11_upstream(echo_target)
    proxy = await proxy_to(emulator, start_proxy, upstream)
    client = await clients(proxy)
    await client.send(
        request(
            "GET",
            "/x",
            b"X-Note: caf\xe9 \xff",
            b"X-Request-Id: id-caf\xe9",
            b"X-Utf8: caf\xc3\xa9",
        )
    )
    assert (await client.answer()).status == 200
    (seen,) = upstream.requests
    assert seen.values(b"X-Note") == [b"caf\xe9 \xff"]
    assert seen.values(b"X-Request-Id") == [b"id-caf\xe9"]
    assert seen.values(b"X-Utf8") == [b"caf\xc3\xa9"]


async def test_answer_header_bytes_and_reason_reach_the_client_unchanged(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """obs-text in an answer's value and reason phrase is relayed, not re-encoded."""
    reply = b"HTTP/1.1 200 Gr\xe9at\r\nX-Note: caf\xe9 \xff\r\nContent-Length: 2\r\n\r\nok"
    answer, client = await relay_one(emulator, start_proxy, h11_upstream, clients, reply)
    assert answer.response.reason == b"Gr\xe9at"
    assert answer.values(b"X-Note") == [b"caf\xe9 \xff"]
    assert client.raw.startswith(b"HTTP/1.1 200 Gr\xe9at\r\nX-Note: caf\xe9 \xff\r\n")


async def test_a_token_with_a_line_break_never_splits_the_upstream_request(
    aiohttp_server: Any,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """A hostile token endpoint's token with CR LF is a failed fetch (503), never sent:
    the token is checked when fetched, and the head writer checks again (below)."""

    async def token(_: web.Request) -> web.Response:
        access = "t0ken\r\nX-Injected: yes\r\n\r\nGET /smuggled HTTP/1.1"
        return web.json_response({"access_token": access, "expires_in": 3600})

    app = web.Application()
    app.router.add_post("/accesstoken/get", token)
    token_server = await aiohttp_server(app, host="127.0.0.1")
    upstream = await h11_upstream(echo_target)
    config = make_config(token_server.make_url("/accesstoken/get"), upstream.url)
    client = await clients(await start_proxy(config))
    await client.send(request("GET", "/x"))
    assert (await client.answer()).status == 503
    assert upstream.requests == []


@pytest.mark.parametrize("value", ["a\r\nX-Injected: yes", "a\nb", "a\rb", "a\x00b", "a\x7fb"])
def test_the_request_head_writer_refuses_a_value_that_would_split_the_head(value: str) -> None:
    """The proxy writes the upstream head itself, so it keeps the check aiohttp's
    serializer made: a field value with a line break or control character is refused."""
    headers = CIMultiDict({"Host": "h", "X-Note": value})
    with pytest.raises(ValueError, match="control character"):
        _request_head("GET / HTTP/1.1", headers)


#: What a field value or reason phrase may hold: HTAB, SP, VCHAR, obs-text (RFC 9110 §5.5).
FIELD_BYTE = st.sampled_from([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
FIELD_VALUE = (
    st.lists(FIELD_BYTE, min_size=1, max_size=40)
    .map(bytes)
    .map(
        lambda v: v.strip(b" \t") or b"v"  # a value neither starts nor ends with whitespace
    )
)


def reflect(seen: Seen) -> bytes:
    """The request's X-Value back as the answer's, its X-Reason as the reason phrase."""
    (value,), (reason,) = seen.values(b"X-Value"), seen.values(b"X-Reason")
    return b"HTTP/1.1 200 %s\r\nX-Value: %s\r\nContent-Length: 2\r\n\r\nok" % (reason, value)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=FIELD_VALUE, reason=FIELD_VALUE)
async def test_field_and_reason_bytes_cross_unchanged_both_ways(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    value: bytes,
    reason: bytes,
) -> None:
    """Any bytes a field value may hold reach the upstream as sent, and come back in the
    answer (and as its reason phrase) as the upstream sent them: latin-1 round-trips."""
    upstream = await h11_upstream(reflect)
    proxy = await proxy_to(emulator, start_proxy, upstream)
    client = await Client.open(proxy)
    try:
        await client.send(request("GET", "/v", b"X-Value: " + value, b"X-Reason: " + reason))
        answer = await client.answer()
    finally:
        await client.close()
        await proxy.runner.cleanup()
    (seen,) = upstream.requests
    assert (seen.values(b"X-Value"), seen.values(b"X-Reason")) == ([value], [reason])
    assert (answer.values(b"X-Value"), answer.response.reason) == ([value], reason)


# --------------------------------------------------------------------------- 3. answers


async def test_a_relayed_answer_gains_no_server_or_content_type(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """What the upstream sent, plus X-Request-Id (and the Date it did not send, as
    RFC 9110 §6.6.1 asks): nothing else is made up."""
    answer, _ = await relay_one(emulator, start_proxy, h11_upstream, clients, OK_ANSWER)
    assert answer.names() == {b"content-length", b"x-request-id", b"date"}
    assert answer.body == b"ok"


async def test_a_304_keeps_its_content_length(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """A 304's Content-Length (the length of what the client holds) is relayed; no body
    follows, so the next call on the connection gets its own answer."""
    reply = b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n'
    answer, client = await relay_one(emulator, start_proxy, h11_upstream, clients, reply)
    assert (answer.status, answer.body) == (304, b"")
    assert answer.values(b"Content-Length") == [b"1234"]
    assert answer.values(b"ETag") == [b'"v1"']
    await client.send(request("GET", "/again"))
    assert (await client.answer()).status == 304


async def test_early_hints_are_relayed_before_the_final_answer(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """A 1xx other than 101 reaches an HTTP/1.1 client first (RFC 9110 §15.2)."""
    reply = EARLY_HINTS + OK_ANSWER
    answer, _ = await relay_one(emulator, start_proxy, h11_upstream, clients, reply)
    assert [(i.status_code, list(i.headers.raw_items())) for i in answer.interim] == [
        (103, [(b"Link", b"</style.css>; rel=preload")])
    ]
    assert (answer.status, answer.body) == (200, b"ok")


async def test_an_interim_answer_is_relayed_without_framing_fields(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """A 1xx has no body: a Content-Length on it (which a client could take as the
    length of what follows) is not relayed (RFC 9110 §8.6)."""
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nContent-Length: 5\r\n\r\n"
    answer, _ = await relay_one(emulator, start_proxy, h11_upstream, clients, hints + OK_ANSWER)
    assert [list(i.headers.raw_items()) for i in answer.interim] == [
        [(b"Link", b"</a.css>; rel=preload")]
    ]
    assert (answer.status, answer.body) == (200, b"ok")


async def test_no_interim_answer_goes_to_an_http10_client(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """HTTP/1.0 has no 1xx: such a client gets the final answer only."""
    reply = EARLY_HINTS + OK_ANSWER
    client_request = b"GET /x HTTP/1.0\r\nHost: proxy.test\r\n\r\n"
    answer, client = await relay_one(
        emulator, start_proxy, h11_upstream, clients, reply, client_request
    )
    assert answer.interim == []
    assert client.raw.startswith(b"HTTP/1.0 200 OK\r\n")
    assert (answer.status, answer.body) == (200, b"ok")


async def test_an_unsolicited_101_is_a_502_problem_and_heals(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """The proxy never asks to switch protocols: a 101 is a broken upstream, not an
    answer; its connection is dropped and the next call is served."""
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    upstream = await h11_upstream(lambda seen: switch if seen.target == b"/up" else OK_ANSWER)
    proxy = await proxy_to(emulator, start_proxy, upstream)
    client = await clients(proxy)
    await client.send(request("GET", "/up"))
    answer = await client.answer()
    assert answer.status == 502
    assert answer.values(b"Content-Type") == [b"application/problem+json"]
    assert orjson.loads(answer.body)["status"] == 502
    (line,) = proxy.logs.events("request_completed")
    assert (line["status"], line["error"]) == (502, "upstream_MalformedAnswer")
    kind = {"kind": "upstream_MalformedAnswer"}
    assert await metric(proxy, "vipps_proxy_upstream_errors_total", **kind) == 1

    healed = await clients(proxy)
    await healed.send(request("GET", "/next"))
    assert ((await healed.answer()).status, len(upstream.writers)) == (200, 2)


@pytest.mark.parametrize(
    "reply",
    [
        # llhttp (lenient with answers) frames the body by this length, but the field's
        # name is "Content-Length ": relayed, a client would get it beside the proxy's
        # own Transfer-Encoding, and a lenient one read the body by the length
        b"HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nX-Note\t: a\r\nContent-Length: 3\r\n\r\nabc",
        # no status line has two digits
        b"HTTP/1.1 099 Odd\r\nContent-Length: 3\r\n\r\nabc",
    ],
    ids=["space-before-colon", "tab-before-colon", "status-099"],
)
async def test_an_answer_head_no_client_could_read_alike_is_a_502_problem(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
    reply: bytes,
) -> None:
    """RFC 9112 §5.1: whitespace between a field name and its colon must never reach
    the client (each recipient might frame the answer differently); neither does a
    status code that is not three digits. Both are a broken upstream: 502."""
    answer, _ = await relay_one(emulator, start_proxy, h11_upstream, clients, reply)
    assert answer.status == 502
    assert answer.values(b"Content-Type") == [b"application/problem+json"]


HOP_BY_HOP_ANSWER = (
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
    b"Proxy-Authenticate: Basic realm=upstream\r\nProxy-Connection: keep-alive\r\n"
    b"TE: trailers\r\nTrailer: X-Checksum\r\nUpgrade: h2c\r\nX-Request-Id: upstream-own-id\r\n"
    b"X-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
)


async def test_an_answer_never_keeps_hop_by_hop_fields_or_the_upstreams_request_id(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """Connection, Keep-Alive, Proxy-Authenticate, Proxy-Connection, TE, Trailer and
    Upgrade are about the upstream's hop: the client sees none of them. The upstream's
    X-Request-Id gives way to the proxy's (the client's own, when it sent one)."""
    answer, client = await relay_one(
        emulator, start_proxy, h11_upstream, clients, HOP_BY_HOP_ANSWER
    )
    assert answer.names() == {b"content-length", b"x-kept", b"x-request-id", b"date"}
    (request_id,) = answer.values(b"X-Request-Id")
    assert request_id != b"upstream-own-id"
    assert answer.body == b"ok"
    await client.send(request("GET", "/again", b"X-Request-Id: client-own-id"))
    again = await client.answer()
    assert again.names() == {b"content-length", b"x-kept", b"x-request-id", b"date"}
    assert again.values(b"X-Request-Id") == [b"client-own-id"]
