"""Transfer codings other than chunked, both ways (issue 22, point 3).

A request whose ``Transfer-Encoding`` is anything but ``chunked`` alone gets 501
(RFC 9112 §6.1), as problem+json, and its connection is closed: the proxy sends bodies
upstream as plain chunked, so any other coding would arrive upstream lost. An answer
with such a coding is refused, 502 ``upstream_bad_answer``, not decoded: the proxy
relays answers as received and would otherwise hand on gzip bytes under a plain
``chunked``. h11, a parser independent of aiohttp's, judges both ends: it refuses the
same requests, and it reads every answer the client gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import h11_wire
from tests.conftest import ProxyFactory, RunningEmulator, RunningProxy
from tests.h11_wire import (
    OK_ANSWER,
    SETTINGS,
    WAIT,
    Client,
    UpstreamFactory,
    assert_bad_answer,
    echo_target,
    one_answer,
    proxy_to,
    request,
    scripted_proxy,
)

pytestmark = pytest.mark.timeout(120)
h11_upstream = h11_wire.h11_upstream  # fixtures shared with test_wire, taken by name
clients = h11_wire.clients
shared = h11_wire.shared

CODINGS = ["chunked", "gzip", "deflate", "compress", "identity", "foo", "x-gzip", "chunked;x=1"]
#: One field's value: codings in any letter case, joined as a list.
FIELD = st.builds(
    lambda names, upper, glue: glue.join(
        n.upper() if u else n for n, u in zip(names, upper, strict=False)
    ),
    st.lists(st.sampled_from(CODINGS), min_size=1, max_size=3),
    st.lists(st.booleans(), min_size=3, max_size=3),
    st.sampled_from([",", ", ", " ,"]),
)
#: Transfer-Encoding as one field or two, anything but exactly one ``chunked``.
NOT_CHUNKED_ALONE = st.lists(FIELD, min_size=1, max_size=2).filter(
    lambda fields: [f.lower() for f in fields] != ["chunked"]
)
CHUNKED_BODY = b"3\r\nabc\r\n0\r\n\r\n"


def h11_refusal(fields: list[str]) -> int | None:
    """The status h11, as a server, would refuse this request head with (None: taken)."""
    conn = h11.Connection(h11.SERVER)
    head = [b"POST /x HTTP/1.1", b"Host: proxy.test"]
    head += [b"Transfer-Encoding: " + value.encode() for value in fields]
    conn.receive_data(b"\r\n".join(head) + b"\r\n\r\n" + CHUNKED_BODY)
    try:
        conn.next_event()
    except h11.RemoteProtocolError as exc:
        return exc.error_status_hint
    return None


@SETTINGS
@given(fields=NOT_CHUNKED_ALONE)
async def test_a_request_coded_other_than_chunked_alone_is_501_and_closed(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    shared: dict[str, Any],
    fields: list[str],
) -> None:
    """Any Transfer-Encoding but chunked alone (gzip before it, deflate, identity, an
    unknown coding, chunked twice or with a parameter) gets a 501 problem, the
    connection closed, and nothing goes upstream; h11 refuses each with 501 too."""
    assert h11_refusal(fields) == 501
    proxy = await scripted_proxy(shared, emulator, start_proxy, h11_upstream, OK_ANSWER)
    client = await Client.open(proxy)
    try:
        codings = [b"Transfer-Encoding: " + value.encode() for value in fields]
        await client.send(request("POST", "/x", *codings) + CHUNKED_BODY)
        answer = await client.answer("POST")
        async with asyncio.timeout(WAIT):
            assert await client.reader.read() == b""  # closed after the answer
    finally:
        await client.close()
    assert answer.status == 501
    assert answer.values(b"Content-Type") == [b"application/problem+json"]
    assert orjson.loads(answer.body)["status"] == 501
    assert shared["upstream"].requests == []


async def test_a_request_chunked_alone_in_any_case_is_forwarded(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """Coding names are case-insensitive (RFC 9112 §7): ``Chunked`` is chunked."""
    upstream = await h11_upstream(echo_target)
    client = await clients(await proxy_to(emulator, start_proxy, upstream))
    await client.send(request("POST", "/x", b"Transfer-Encoding: Chunked") + CHUNKED_BODY)
    answer = await client.answer("POST")
    assert (answer.status, answer.body) == (200, b"/x 3")


@SETTINGS
@given(fields=NOT_CHUNKED_ALONE)
async def test_an_answer_coded_other_than_chunked_alone_is_a_502(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    shared: dict[str, Any],
    fields: list[str],
) -> None:
    """An answer under any transfer coding but chunked alone is refused, not decoded:
    a 502 problem h11 reads, never gzip bytes under a plain chunked."""
    codings = b"".join(b"Transfer-Encoding: %s\r\n" % value.encode() for value in fields)
    reply = b"HTTP/1.1 200 OK\r\n" + codings + b"\r\n" + CHUNKED_BODY
    proxy = await scripted_proxy(shared, emulator, start_proxy, h11_upstream, reply)
    assert_bad_answer(await one_answer(proxy))


async def test_an_answer_chunked_alone_in_any_case_is_relayed(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    h11_upstream: UpstreamFactory,
    clients: Callable[[RunningProxy], Awaitable[Client]],
) -> None:
    """``Transfer-Encoding: CHUNKED`` is chunked: the body reaches the client whole."""
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n" + CHUNKED_BODY
    upstream = await h11_upstream(lambda _: reply)
    client = await clients(await proxy_to(emulator, start_proxy, upstream))
    await client.send(request("GET", "/x"))
    answer = await client.answer()
    assert (answer.status, answer.body) == (200, b"abc")
