"""A hostile token endpoint: answers in pieces, strange lifetimes, any shape at all.

The endpoints here are raw asyncio socket servers on 127.0.0.1, so that the bytes and
their timing on the wire are the test's: a JSON answer written byte by byte or in two
pieces, with a Content-Length or chunked. The proxy in front of them is the real one;
its upstream is the emulator, whose echo endpoint shows the token that arrived.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import format_datetime
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from proxy.config import Config
from proxy.logs import configure_logging
from proxy.redact import Redactor
from proxy.server import start
from proxy.tokenfetch import TokenFetchError, parse_token_response
from tests import raw_token_endpoint
from tests.conftest import (
    LogSink,
    ProxyFactory,
    RunningEmulator,
    RunningProxy,
    make_config,
)
from tests.raw_token_endpoint import (
    EndpointFactory,
    RawTokenEndpoint,
    Writer,
    byte_by_byte,
    http_answer,
    in_two_pieces,
)

ECHO = "/echo/token-check"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.split-answer-token.c2lnbmF0dXJl"
MIB = 1 << 20
VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")  # RFC 6750's b64token fits in it; no space
token_endpoint = raw_token_endpoint.token_endpoint  # the fixture, taken by name


def token_json(**fields: Any) -> bytes:
    """A Vipps-shaped token answer (strings, as Vipps sends), with ``fields`` changed."""
    now = int(time.time())
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "expires_in": "3600",
        "ext_expires_in": "3600",
        "expires_on": str(now + 3600),
        "not_before": str(now),
        "resource": "00000002-0000-0000-c000-000000000000",
        "access_token": TOKEN,
    }
    body.update(fields)
    return json.dumps(body).encode()


async def call(proxy: RunningProxy, path: str = ECHO) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as client, client.get(proxy.at(path)) as response:
        return response.status, dict(response.headers), await response.read()


def sent_authorization(body: bytes) -> list[str]:
    echoed = orjson.loads(body)
    return [v for k, v in echoed["headers"] if k.lower() == "authorization"]


# ------------------------------------------------------------ 1. answers in pieces


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("write", [byte_by_byte, in_two_pieces], ids=["byte-by-byte", "two-pieces"])
async def test_a_token_answer_arriving_in_pieces_is_read_whole(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    token_endpoint: EndpointFactory,
    write: Writer,
    chunked: bool,
) -> None:
    """However the answer is cut on the wire, the whole JSON is read and the token used."""
    endpoint = await token_endpoint(http_answer(token_json(), chunked=chunked), write)
    proxy = await start_proxy(make_config(endpoint.url, emulator.url))

    status, _, body = await call(proxy)

    assert status == 200
    assert sent_authorization(body) == [f"Bearer {TOKEN}"]
    assert proxy.logs.events("token_refresh_failed") == []
    assert endpoint.requests == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_token_answer_over_one_mib_is_a_failed_fetch(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    token_endpoint: EndpointFactory,
    chunked: bool,
) -> None:
    """An answer larger than 1 MiB is refused as such, never parsed from a prefix."""
    answer = http_answer(token_json(padding="x" * MIB), chunked=chunked)
    endpoint = await token_endpoint(answer)
    proxy = await start_proxy(make_config(endpoint.url, emulator.url))

    status, headers, _ = await call(proxy)

    assert status == 503
    assert int(headers["Retry-After"]) >= 1
    failures = proxy.logs.events("token_refresh_failed")
    assert failures
    assert all("larger than 1 MiB" in event["error"] for event in failures)


async def test_a_token_answer_of_exactly_one_mib_is_used(
    emulator: RunningEmulator, start_proxy: ProxyFactory, token_endpoint: EndpointFactory
) -> None:
    """The bound is "larger than 1 MiB": an answer of 1 MiB to the byte is read and used."""
    unpadded = len(token_json(padding=""))
    body = token_json(padding="x" * (MIB - unpadded))
    assert len(body) == MIB
    endpoint = await token_endpoint(http_answer(body))
    proxy = await start_proxy(make_config(endpoint.url, emulator.url))

    status, _, answered = await call(proxy)

    assert status == 200
    assert sent_authorization(answered) == [f"Bearer {TOKEN}"]


async def test_a_refused_fetch_logs_the_first_512_characters_of_the_answer(
    emulator: RunningEmulator, start_proxy: ProxyFactory, token_endpoint: EndpointFactory
) -> None:
    """A 500 with a long body: the failure line quotes its first 512 characters only."""
    endpoint = await token_endpoint(http_answer(b"e" * 511 + b"fg" + b"h" * 100, status=500))
    proxy = await start_proxy(make_config(endpoint.url, emulator.url))

    status, _, _ = await call(proxy)

    assert status == 503
    (first, *_) = proxy.logs.events("token_refresh_failed")
    assert first["error"] == "token endpoint answered 500: " + "e" * 511 + "f"


@dataclass
class EndlessBody:
    """A hostile endpoint's writer: ``head`` of a chunked answer, then 64 KiB chunks
    until the reader hangs up, or ``BOUND`` bytes. ``most``: the most one connection took."""

    BOUND = 64 * MIB
    most: int = 0

    async def __call__(self, writer: asyncio.StreamWriter, head: bytes) -> None:
        writer.write(head)
        chunk = b"x" * 65536
        framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        sent = 0
        while sent < self.BOUND:
            writer.write(framed)
            await writer.drain()
            sent += len(chunk)
            self.most = max(self.most, sent)


async def test_a_token_answer_without_end_is_cut_just_past_one_mib(
    emulator: RunningEmulator, start_proxy: ProxyFactory, token_endpoint: EndpointFactory
) -> None:
    """A chunked body that never ends: the proxy stops reading just past 1 MiB, hangs
    up and fails the fetch as too large; it never takes the 64 MiB on offer."""
    head = b"HTTP/1.1 200 X\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = EndlessBody()
    endpoint = await token_endpoint(head, body)
    proxy = await start_proxy(make_config(endpoint.url, emulator.url))

    status, _, _ = await call(proxy)

    assert status == 503
    failures = proxy.logs.events("token_refresh_failed")
    assert failures
    assert all("larger than 1 MiB" in event["error"] for event in failures)
    assert body.most < EndlessBody.BOUND


# ------------------------------------------------------------------ 2. lifetimes


@pytest.mark.parametrize(
    "fields",
    [
        {"expires_in": "nan"},
        {"expires_in": "NaN"},
        {"expires_in": "inf"},
        {"expires_in": "-Infinity"},
        {"expires_in": "1e400"},
        {"expires_in": "0"},
        {"expires_in": "-5"},
        {"expires_in": "soon"},
        {"expires_in": True},
        {"expires_in": [3600]},
        {"expires_in": {"s": 3600}},
        {"expires_in": "0", "ext_expires_in": "3600"},
        {"expires_in": None, "ext_expires_in": None, "expires_on": "nan"},
        {"expires_in": None, "ext_expires_in": None, "not_before": "inf"},
        {"expires_in": None, "ext_expires_in": None, "expires_on": "1", "not_before": "2"},
    ],
    ids=repr,
)
def test_a_lifetime_field_that_is_not_a_finite_positive_number_fails_the_fetch(
    fields: dict[str, Any],
) -> None:
    """Every lifetime field the proxy uses must be a finite number, the lifetime above
    zero."""
    body = orjson.loads(token_json())
    body.update(fields)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(TokenFetchError, match="token response"):
        parse_token_response(orjson.dumps(body), 0.0)


@pytest.mark.parametrize(
    "fields",
    [
        {"ext_expires_in": "0"},
        {"ext_expires_in": 0},
        {"ext_expires_in": "-1"},
        {"ext_expires_in": "nan"},
        {"ext_expires_in": "disabled"},
        {"ext_expires_in": None},
        {"resource": {"odd": ["shape"]}},
        {"resource": None},
        {"token_type": "bearer"},
        {"token_type": "BEARER"},
        {"token_type": "pop"},
        {"scope": "api", "id_token": 7, "x-unknown": [None, True]},
    ],
    ids=repr,
)
def test_fields_the_proxy_does_not_use_never_refuse_a_token(fields: dict[str, Any]) -> None:
    """ext_expires_in ("0" in Vipps' own answer), resource, token_type's case and any
    unknown field are not read: the token is taken, its lifetime from expires_in."""
    body = orjson.loads(token_json())
    body.update(fields)

    token = parse_token_response(orjson.dumps(body), 0.0)

    assert token.value.reveal() == TOKEN
    assert token.expires_at == pytest.approx(3600 - 5)


@pytest.mark.parametrize(
    ("expires_on", "not_before"),
    [("1495271273", "1495184574"), ("1", "2"), ("nan", "inf"), (str(10**12), "0")],
    ids=["2017", "reversed", "not-numbers", "far-future"],
)
def test_absolute_times_do_not_matter_when_expires_in_is_present(
    expires_on: str, not_before: str
) -> None:
    """expires_on and not_before from a clock that disagrees with ours (or none at all)
    are not read when expires_in says how long the token lives."""
    body = token_json(expires_in="86398", expires_on=expires_on, not_before=not_before)

    token = parse_token_response(body, 100.0)

    assert token.expires_at == pytest.approx(100 + 86398 - 5)


def test_without_expires_in_the_lifetime_is_expires_on_less_not_before() -> None:
    """No expires_in: the token lives expires_on - not_before seconds from receipt."""
    body = orjson.loads(token_json(expires_on="1495271273", not_before="1495267673"))
    del body["expires_in"]

    token = parse_token_response(orjson.dumps(body), 0.0)

    assert token.expires_at == pytest.approx(3600 - 5)


@pytest.mark.parametrize("lifetime", ["nan", "inf", "-1", "x"])
async def test_a_nan_lifetime_is_a_logged_failed_fetch_with_backoff(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    token_endpoint: EndpointFactory,
    lifetime: str,
) -> None:
    """expires_in "nan": 503 + Retry-After (never a 500), a token_refresh_failed line
    saying why, and retries with backoff rather than a fetch per call."""
    endpoint = await token_endpoint(http_answer(token_json(expires_in=lifetime)))
    started = time.monotonic()
    proxy = await start_proxy(make_config(endpoint.url, emulator.url))

    results = [await call(proxy) for _ in range(20)]

    elapsed = time.monotonic() - started
    assert {status for status, _, _ in results} == {503}
    assert all(int(headers["Retry-After"]) >= 1 for _, headers, _ in results)
    failures = proxy.logs.events("token_refresh_failed")
    assert failures
    assert all("lifetime" in event["error"] for event in failures)
    assert proxy.logs.events("token_fetched") == []
    assert endpoint.requests <= elapsed + 2  # backoff: nowhere near one per call


@pytest.mark.parametrize("lifetime", ["0.001", "1e-09"])
async def test_tiny_lifetimes_cost_at_most_one_fetch_a_second(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    token_endpoint: EndpointFactory,
    lifetime: str,
) -> None:
    """Whatever lifetime the endpoint claims, a credential set is fetched for at most
    once a second; calls meanwhile get 503 + Retry-After, never a 500."""
    endpoint = await token_endpoint(http_answer(token_json(expires_in=lifetime)))
    started = time.monotonic()  # the first fetch starts with the proxy
    proxy = await start_proxy(make_config(endpoint.url, emulator.url))
    statuses: list[int] = []
    while time.monotonic() - started < 2.0:
        batch = await asyncio.gather(*(call(proxy) for _ in range(5)))
        statuses += [status for status, _, _ in batch]
        assert all(int(h["Retry-After"]) >= 1 for s, h, _ in batch if s == 503)

    elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 503}
    assert endpoint.requests <= math.floor(elapsed) + 1


async def test_a_token_expired_when_fetched_is_never_sent(
    start_emulator: Callable[..., Awaitable[RunningEmulator]], start_proxy: ProxyFactory
) -> None:
    """A token that lives 1e-9 s has expired before it could be injected: the call gets
    503 + Retry-After and the upstream never sees the expired token."""
    emulator = await start_emulator()
    emulator.state.faults.expires_in_text = "1e-09"
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))

    results = await asyncio.gather(*(call(proxy, "/epayment/v1/payments/p-1") for _ in range(5)))

    assert {status for status, _, _ in results} == {503}
    assert all(int(headers["Retry-After"]) >= 1 for _, headers, _ in results)
    assert [r for r in emulator.state.received if r.raw_path == "/epayment/v1/payments/p-1"] == []
    assert emulator.state.token_requests["accesstoken"] >= 1


# ------------------------------------------------- 2. any answer at all: never a 500

SPECIAL_NUMBERS = st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-0", "0", "1e-09", "0.001", "3600", "", " "]
)
ANY_NUMBER = st.one_of(
    SPECIAL_NUMBERS,
    st.integers(),
    st.floats(),
    st.floats().map(str),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
ANY_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.text(max_size=20), ANY_NUMBER),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
TOKEN_VALUE = st.one_of(
    st.just(TOKEN),
    st.just(TOKEN),
    st.just(TOKEN),
    st.text(max_size=40),
    st.text(st.characters(max_codepoint=127), max_size=40),
    ANY_VALUE,
)
FIELD_NAMES = ["expires_in", "ext_expires_in", "expires_on", "not_before", "access_token"]


@st.composite
def token_answers(draw: st.DrawFn) -> tuple[int, bytes]:
    """A status and a body: mostly token-shaped JSON with odd values, sometimes junk."""
    status = draw(st.sampled_from([200, 200, 200, 201, 204, 400, 401, 500, 503]))
    if draw(st.integers(0, 9)) == 0:
        return status, draw(st.binary(max_size=64))
    body: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "expires_in": ANY_NUMBER | ANY_VALUE,
                "ext_expires_in": ANY_NUMBER | ANY_VALUE,
                "expires_on": ANY_NUMBER | ANY_VALUE,
                "not_before": ANY_NUMBER | ANY_VALUE,
                "token_type": ANY_VALUE,
            },
        )
    )
    if draw(st.integers(0, 4)):
        body["access_token"] = draw(TOKEN_VALUE)
    shape = draw(st.sampled_from(["object", "object", "list", "scalar"]))
    data: Any = body if shape == "object" else [body] if shape == "list" else body.get("expires_in")
    return status, json.dumps(data).encode()  # the stdlib writes NaN, Infinity, huge ints


@dataclass
class Outcome:
    """What three concurrent calls through a fresh proxy met, and what reached the
    upstream."""

    statuses: list[int]
    retry_afters: list[str | None]
    fetches: int
    elapsed: float
    authorizations: list[bytes]


async def _one_answer(status: int, body: bytes, extra_head: bytes = b"") -> Outcome:
    """Three concurrent calls through a fresh proxy whose token endpoint answers so."""
    answer = http_answer(body, status=status)
    line_end = answer.index(b"\r\n") + 2
    endpoint = RawTokenEndpoint(answer[:line_end] + extra_head + answer[line_end:])
    endpoint.server = await asyncio.start_server(endpoint._serve, "127.0.0.1", 0)
    authorizations: list[bytes] = []
    upstream_server, upstream = await _upstream_ok(authorizations)
    config: Config = make_config(endpoint.url, upstream)
    sink = LogSink()
    redactor = Redactor(config.secrets)
    configure_logging("debug", "json", redactor, sink, cache=False)  # type: ignore[arg-type]
    started = time.monotonic()
    runner = await start(config, redactor)
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as client, asyncio.timeout(60):  # never a hang

            async def one() -> tuple[int, str | None]:
                async with client.get(f"http://{host}:{port}/x") as response:
                    await response.read()
                    return response.status, response.headers.get("Retry-After")

            answers = await asyncio.gather(one(), one(), one())
    finally:
        await runner.cleanup()
        for server in (endpoint.server, upstream_server):
            server.close()
            await server.wait_closed()
    assert "internal_error" not in sink.text()
    statuses, retry_afters = [a[0] for a in answers], [a[1] for a in answers]
    elapsed = time.monotonic() - started
    return Outcome(statuses, retry_afters, endpoint.requests, elapsed, authorizations)


async def _upstream_ok(authorizations: list[bytes]) -> tuple[asyncio.Server, URL]:
    """An upstream answering 200 to everything; keeps each Authorization it is sent."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"authorization":
                        authorizations.append(value.strip())
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(token_answers())
@example((200, token_json(expires_in="nan")))
@example((200, token_json(expires_in="1e-09")))
@example((200, token_json(access_token="eyJ\r\nX-Injected: 1")))
@example((200, token_json(access_token="eyJ\u00e9\u2603")))
def test_no_token_endpoint_answer_becomes_a_500(answer: tuple[int, bytes]) -> None:
    """Any status and any JSON shape or value from the token endpoint: calls get 200 or
    503, never a 500, and the endpoint is asked at most about once a second."""
    status, body = answer

    outcome = asyncio.run(_one_answer(status, body))

    assert set(outcome.statuses) <= {200, 503}, (outcome.statuses, body)
    assert outcome.fetches <= math.floor(outcome.elapsed) + 1


RETRY_AFTER = st.one_of(
    st.none(),
    st.integers(0, 10**30).map(str),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: format_datetime(d, usegmt=True)),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(token_answers(), RETRY_AFTER)
@example((200, token_json(ext_expires_in="0")), None)
@example((429, b"{}"), "99999999999999999999999999")
@example((503, b"<html>busy</html>"), "Fri, 31 Dec 9999 23:59:59 GMT")
@example((200, token_json(access_token="eyJ\r\nX-Injected: 1")), None)
@example((200, token_json(access_token="a b")), None)
def test_a_token_answer_gives_its_own_token_or_a_503_never_another(
    answer: tuple[int, bytes], retry_after: str | None
) -> None:
    """Any status, body and Retry-After from the token endpoint: every call is sent
    with exactly the access_token the answer holds, or gets 503 with a Retry-After;
    never a 500, a hang, or a token the endpoint did not give."""
    status, body = answer
    extra = b"" if retry_after is None else f"Retry-After: {retry_after}\r\n".encode()

    outcome = asyncio.run(_one_answer(status, body, extra))

    given_token = _access_token(body) if status == 200 else None
    if given_token is not None and _lives_a_minute(body):
        assert outcome.statuses == [200, 200, 200], body
    for got, retry in zip(outcome.statuses, outcome.retry_afters, strict=True):
        assert got in (200, 503), (got, body)
        if got == 503:
            assert retry is not None
            assert int(retry) >= 1
        else:
            assert given_token is not None
    expected = f"Bearer {given_token}".encode()
    assert all(sent == expected for sent in outcome.authorizations), outcome.authorizations


def _lives_a_minute(body: bytes) -> bool:
    """Whether the answer's expires_in (the lifetime) is a finite number of a minute or
    more, whatever else it holds."""
    value = json.loads(body).get("expires_in")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return False
    try:
        return 60 <= float(value) < math.inf
    except (ValueError, OverflowError):
        return False


def _access_token(body: bytes) -> str | None:
    """The access_token a token answer holds, if it is one a header can carry."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    token = data.get("access_token") if isinstance(data, dict) else None
    return token if isinstance(token, str) and VISIBLE_ASCII.fullmatch(token) else None
