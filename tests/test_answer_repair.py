"""Answers repaired as RFC 9110 asks, or refused (issue 22, point 6).

The upstream is a raw socket that answers scripted bytes, whole or split at any point;
the client reads what the proxy relays with h11, a parser independent of aiohttp's.
A relayed answer gains ``Date`` when the upstream sent none (§6.6.1) and loses a 204's
``Content-Length`` (§8.6). An answer that is no HTTP to relay is a 502 problem,
``upstream_bad_answer``: a control byte in a field value (the same byte in a request is
a 400), a first field line that starts with whitespace (RFC 9112 §2.2), which aiohttp's
lenient parser would otherwise read as a field, framing included.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import h11_wire
from tests.conftest import ProxyFactory, RunningEmulator, RunningProxy, make_config
from tests.h11_wire import (
    EARLY_HINTS,
    OK_ANSWER,
    SETTINGS,
    Client,
    UpstreamFactory,
    assert_bad_answer,
    one_answer,
    proxy_to,
    relay_one,
    request,
    scripted_proxy,
)
from tests.test_fault_matrix import metric

pytestmark = pytest.mark.timeout(120)
h11_upstream = h11_wire.h11_upstream  # fixtures shared with test_wire, taken by name
clients = h11_wire.clients
shared = h11_wire.shared

#: Bytes no field value may hold: controls but HTAB, and DEL (RFC 9110 §5.5). NUL,
#: CR and LF are left out: aiohttp's parser refuses those itself.
CONTROL = [*range(0x01, 0x09), *range(0x0B, 0x0D), *range(0x0E, 0x20), 0x7F]
ALLOWED = [0x09, *range(0x20, 0x7F), *range(0x80, 0x100)]


# --------------------------------------------------------------------------- repaired


async def test_an_answer_without_date_gets_one(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """An upstream that sent no Date: the client gets one, a valid HTTP date."""
    answer, _ = await relay_one(emulator, start_proxy, h11_upstream, clients, OK_ANSWER)
    (date,) = answer.values(b"Date")
    assert email.utils.parsedate_to_datetime(date.decode()).tzname() == "UTC"
    assert answer.body == b"ok"


async def test_an_answers_own_date_is_relayed_alone(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """The upstream's Date is its own and stays, not doubled by the proxy's."""
    reply = b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\nok"
    answer, _ = await relay_one(emulator, start_proxy, h11_upstream, clients, reply)
    assert answer.values(b"Date") == [b"Sun, 06 Nov 1994 08:49:37 GMT"]


async def test_a_204_loses_its_content_length(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """A 204 has no body, so no Content-Length (RFC 9110 §8.6), whatever the upstream
    said; the next call on the connection gets its own answer."""
    reply = b"HTTP/1.1 204 No Content\r\nX-Kept: yes\r\nContent-Length: 5\r\n\r\n"
    answer, client = await relay_one(emulator, start_proxy, h11_upstream, clients, reply)
    assert (answer.status, answer.body) == (204, b"")
    assert b"content-length" not in answer.names()
    assert answer.values(b"X-Kept") == [b"yes"]
    await client.send(request("GET", "/again"))
    assert (await client.answer()).status == 204


# --------------------------------------------------------------------------- refused


@SETTINGS
@given(
    start=st.lists(st.sampled_from(ALLOWED), max_size=8).map(bytes),
    control=st.sampled_from(CONTROL),
    end=st.lists(st.sampled_from(ALLOWED), max_size=8).map(bytes),
)
async def test_a_control_byte_in_an_answer_field_value_is_a_502(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    shared: dict[str, Any],
    start: bytes,
    control: int,
    end: bytes,
) -> None:
    """Any control byte (or DEL) anywhere in an answer's field value: a 502 problem,
    never relayed, as the same byte in a request gets a 400."""
    value = start + bytes([control]) + end
    reply = b"HTTP/1.1 200 OK\r\nX-Note: v" + value + b"\r\nContent-Length: 2\r\n\r\nok"
    proxy = await scripted_proxy(shared, emulator, start_proxy, h11_upstream, reply)
    assert_bad_answer(await one_answer(proxy))


@SETTINGS
@given(value=st.lists(st.sampled_from(ALLOWED), min_size=1, max_size=16).map(bytes))
async def test_an_answer_field_value_of_allowed_bytes_is_relayed_as_sent(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    shared: dict[str, Any],
    value: bytes,
) -> None:
    """HTAB, SP, visible ASCII and obs-text are a field value's own: relayed unchanged."""
    reply = b"HTTP/1.1 200 OK\r\nX-Note: v" + value + b"v\r\nContent-Length: 2\r\n\r\nok"
    proxy = await scripted_proxy(shared, emulator, start_proxy, h11_upstream, reply)
    answer = await one_answer(proxy)
    assert (answer.status, answer.values(b"X-Note")) == (200, [b"v" + value + b"v"])


async def test_a_control_byte_in_an_answer_is_logged_and_counted_as_a_bad_answer(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """The refusal's name in the log and the metrics is upstream_bad_answer."""
    reply = b"HTTP/1.1 200 OK\r\nX-Note: \x1b[31mred\r\nContent-Length: 2\r\n\r\nok"
    upstream = await h11_upstream(lambda _: reply)
    proxy = await proxy_to(emulator, start_proxy, upstream)
    client = await clients(proxy)
    await client.send(request("GET", "/x"))
    assert_bad_answer(await client.answer())
    (line,) = proxy.logs.events("request_completed")
    assert (line["status"], line["error"]) == (502, "upstream_bad_answer")
    kind = {"kind": "upstream_bad_answer"}
    assert await metric(proxy, "vipps_proxy_upstream_errors_total", **kind) == 1


# --------------------------------------------------------------------------- split heads


class SplitUpstream:
    """A raw upstream: takes one GET head per call, answers ``reply`` in the pieces
    ``cuts`` makes of it, each written and drained on its own (no Nagle delay)."""

    def __init__(self) -> None:
        self.reply = b""
        self.cuts: list[int] = []
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                bounds = [0, *sorted(c for c in self.cuts if 0 < c < len(self.reply))]
                for begin, end in zip(bounds, [*bounds[1:], len(self.reply)], strict=True):
                    writer.write(self.reply[begin:end])
                    await writer.drain()
                    await asyncio.sleep(0)  # let each piece go out as a segment of its own
        writer.close()


@pytest.fixture
async def split_upstream() -> AsyncIterator[SplitUpstream]:
    upstream = SplitUpstream()
    upstream.server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    yield upstream
    upstream.server.close()


async def split_proxy(
    shared: dict[str, Any],
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    upstream: SplitUpstream,
) -> RunningProxy:
    if not shared:
        assert upstream.server is not None
        port = upstream.server.sockets[0].getsockname()[1]
        config = make_config(emulator.token_url, f"http://127.0.0.1:{port}")
        shared["proxy"] = await start_proxy(config)
    proxy: RunningProxy = shared["proxy"]
    return proxy


#: Heads whose first field line starts with whitespace; aiohttp's parser takes each.
FOLDED = [
    b"HTTP/1.1 200 OK\r\n Content-Length: 3\r\n\r\nabc",  # the first field line
    b"\r\nHTTP/1.1 200 OK\r\n\tContent-Length: 3\r\n\r\nabc",  # after a blank line
    EARLY_HINTS + b"HTTP/1.1 200 OK\r\n Content-Length: 3\r\n\r\nabc",  # after a 1xx
]
#: Heads without, some with bodies whose lines do (they must not be taken for heads).
STRAIGHT = [
    # an obs-fold is joined into its field with a space (RFC 9112 §5.2)
    (b"HTTP/1.1 200 OK\r\nX-Note: a\r\n b\r\nContent-Length: 3\r\n\r\nabc", b"abc"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\na\n b\n", b"a\n b\n"),
    (EARLY_HINTS + b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\na\r\n\tb\r\n", b"a\r\n\tb\r\n"),
    (b"HTTP/1.1 200 OK\nContent-Length: 5\n\na\n b\n", b"a\n b\n"),  # bare LFs, as aiohttp allows
    (b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\na\n b\n", b"a\n b\n"),  # a blank line first
]
CUTS = st.lists(st.integers(min_value=1, max_value=120), max_size=6)


@SETTINGS
@given(reply=st.sampled_from(FOLDED), cuts=CUTS)
async def test_an_answer_head_line_starting_with_whitespace_is_a_502_however_split(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    split_upstream: SplitUpstream,
    shared: dict[str, Any],
    reply: bytes,
    cuts: list[int],
) -> None:
    """A first field line starting with whitespace (which aiohttp's parser would take
    as the answer's length), sent in any pieces, after a 1xx too: a 502 problem."""
    proxy = await split_proxy(shared, emulator, start_proxy, split_upstream)
    split_upstream.reply, split_upstream.cuts = reply, cuts
    assert_bad_answer(await one_answer(proxy))


@SETTINGS
@given(reply_and_body=st.sampled_from(STRAIGHT), cuts=CUTS)
async def test_an_answer_whose_body_has_lines_starting_with_whitespace_is_relayed(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    split_upstream: SplitUpstream,
    shared: dict[str, Any],
    reply_and_body: tuple[bytes, bytes],
    cuts: list[int],
) -> None:
    """Only a head's first field line is refused for whitespace: an obs-fold further
    down is joined, and a body's lines may start with anything, in any pieces, after
    interim answers too."""
    proxy = await split_proxy(shared, emulator, start_proxy, split_upstream)
    (split_upstream.reply, body), split_upstream.cuts = reply_and_body, cuts
    answer = await one_answer(proxy)
    assert (answer.status, answer.body) == (200, body)
