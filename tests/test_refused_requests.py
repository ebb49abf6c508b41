"""Requests aiohttp's parser refuses: a problem answer, one quiet log line, no header value.

Smuggling scanners send thousands of these. Each is sent on a raw socket to the running
proxy with a client's secrets in other header fields; everything the proxy logs is
captured. Each must get ``application/problem+json`` (400, 431 or 505) and a closed
connection, and leave exactly one ``request_completed`` line at warning with a reason,
no error line, and none of the header values anywhere in the output.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ProxyFactory, RunningEmulator, RunningProxy, make_config
from tests.test_security import PROBLEM_JSON, Answer, read_answer
from tests.webhook_peers import webhooks_table

pytestmark = pytest.mark.timeout(120)  # a ceiling for a busy machine

BEARER = "eyJhbGciOi.client-own-bearer-7f3a9c"
CLIENT_SECRET = "client-secret-value-51d2e8"
MARKER = "marker-value-c0ffee"
#: Fields a legacy client sends along, and that no log line may ever show.
SECRET_FIELDS = (
    f"Authorization: Bearer {BEARER}\r\nclient_secret: {CLIENT_SECRET}\r\nX-Marker: {MARKER}\r\n"
).encode()
VALUES = (BEARER, CLIENT_SECRET, MARKER)
START = b"GET /echo/x HTTP/1.1\r\nHost: proxy.test\r\n"

#: shape -> (request bytes, status, reason)
REFUSED: dict[str, tuple[bytes, int, str]] = {
    "nul-in-a-value": (START + SECRET_FIELDS + b"X-Bad: a\x00b\r\n\r\n", 400, "bad_request"),
    "control-byte-in-a-value": (
        START + SECRET_FIELDS + b"X-Bad: a\x01b\r\n\r\n",
        400,
        "bad_request",
    ),
    "non-ascii-target": (
        b"GET /echo/caf\xc3\xa9 HTTP/1.1\r\nHost: proxy.test\r\n" + SECRET_FIELDS + b"\r\n",
        400,
        "bad_request",
    ),
    "space-in-a-name": (START + SECRET_FIELDS + b"X Bad: a\r\n\r\n", 400, "bad_request"),
    "obs-fold": (START + SECRET_FIELDS + b"X-Fold: a\r\n b\r\n\r\n", 400, "bad_request"),
    "content-length-and-chunked": (
        b"POST /echo/x HTTP/1.1\r\nHost: proxy.test\r\n"
        + SECRET_FIELDS
        + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    "two-hosts": (START + SECRET_FIELDS + b"Host: evil.test\r\n\r\n", 400, "bad_request"),
    "bare-lf": (
        b"GET /echo/x HTTP/1.1\nHost: proxy.test\n" + SECRET_FIELDS.replace(b"\r\n", b"\n") + b"\n",
        400,
        "bad_request",
    ),
    "bad-method": (b"G<T /echo/x HTTP/1.1\r\n" + SECRET_FIELDS + b"\r\n", 400, "bad_request"),
    "tls-on-the-plain-port": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400, "bad_request"),
    "field-over-8190-bytes": (
        START + SECRET_FIELDS + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
    "two-hundred-fields": (
        START + SECRET_FIELDS + b"".join(b"X-N%d: v\r\n" % i for i in range(200)) + b"\r\n",
        431,
        "headers_too_large",
    ),
    "target-over-8190-bytes": (
        b"GET /echo/" + b"a" * 9000 + b" HTTP/1.1\r\n" + SECRET_FIELDS + b"\r\n",
        431,
        "headers_too_large",
    ),
    "http-1.2": (b"GET /echo/x HTTP/1.2\r\n" + SECRET_FIELDS + b"\r\n", 505, "version"),
    "http-x.y": (b"GET /echo/x HTTP/x.y\r\n" + SECRET_FIELDS + b"\r\n", 505, "version"),
}


async def send_raw(
    proxy: RunningProxy, request: bytes, source: str | None = None
) -> tuple[Answer, bytes]:
    """Send ``request`` on a new connection; the answer and what came after it (b"" when
    the proxy closed the connection)."""
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(*proxy.address, local_addr=local)
    try:
        writer.write(request)
        await writer.drain()
        answer = await read_answer(reader)
        async with asyncio.timeout(5):
            after = await reader.read(1 << 16)
        return answer, after
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def assert_logged_once_quietly(proxy: RunningProxy, status: int, reason: str) -> None:
    """One request_completed line at warning for the refusal; no error line; no value."""
    lines = proxy.logs.lines()
    completed = [line for line in lines if line.get("event") == "request_completed"]
    assert [(c["level"], c["status"], c["error"]) for c in completed] == [
        ("warning", status, reason)
    ]
    assert [line for line in lines if line.get("level") in ("error", "critical")] == []
    output = proxy.logs.text()
    for value in VALUES:
        assert value not in output


@pytest.mark.parametrize(("request_bytes", "status", "reason"), REFUSED.values(), ids=REFUSED)
async def test_a_request_the_parser_refuses_gets_a_problem_one_warning_and_no_values(
    proxy: RunningProxy, request_bytes: bytes, status: int, reason: str
) -> None:
    """Each refused shape: problem+json with its status, the connection closed, one
    warning line with the reason, and none of the client's header values logged."""
    answer, after = await send_raw(proxy, request_bytes)
    assert answer.status == status, answer.raw[:300]
    assert answer.headers["Content-Type"] == PROBLEM_JSON
    problem = orjson.loads(answer.body)
    assert problem["status"] == status
    assert problem["request_id"] == answer.headers["X-Request-Id"]
    assert after == b"", "the connection stayed open after a refused request"
    for value in VALUES:
        assert value.encode() not in answer.raw
    assert_logged_once_quietly(proxy, status, reason)


async def test_a_refused_request_after_a_good_one_on_the_same_connection_is_answered_too(
    proxy: RunningProxy,
) -> None:
    """On a kept-alive connection, after a 200, a refused request gets its problem."""
    good = b"GET /echo/ok HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
    reader, writer = await asyncio.open_connection(*proxy.address)
    try:
        writer.write(good)
        first = await read_answer(reader)
        writer.write(START + SECRET_FIELDS + b"X-Bad: a\x00b\r\n\r\n")
        second = await read_answer(reader)
    finally:
        writer.close()
    assert (first.status, second.status) == (200, 400)
    assert second.headers["Content-Type"] == PROBLEM_JSON
    statuses = [line["status"] for line in proxy.logs.events("request_completed")]
    assert statuses[-2:] == [200, 400]
    for value in VALUES:
        assert value not in proxy.logs.text()


async def test_a_refused_request_from_outside_the_allowlist_gets_403_quietly(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """From a peer outside allow_clients, a request the parser refuses is answered as any
    other request from there: 403, one warning line, no values. (A vipps-webhook path,
    which any address may call, keeps the peer from being closed at accept.)"""
    hooks = {
        "webhooks": [webhooks_table(f"{emulator.url}/app")],
        "store": {"path": str(tmp_path / "events.sqlite3")},
    }
    config = make_config(
        emulator.token_url,
        emulator.url,
        server={"allow_clients": ["127.0.0.1/32"]},
        extra=hooks,
    )
    proxy = await start_proxy(config)
    request, _, _ = REFUSED["nul-in-a-value"]
    answer, after = await send_raw(proxy, request, source="127.0.0.2")
    assert answer.status == 403, answer.raw[:300]
    assert answer.headers["Content-Type"] == PROBLEM_JSON
    assert after == b""
    assert_logged_once_quietly(proxy, 403, "client_not_allowed")


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=st.binary(max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v))
async def test_any_bytes_in_a_header_value_are_forwarded_or_refused_quietly(
    proxy: RunningProxy, value: bytes
) -> None:
    """Whatever bytes a field value holds: a forwarded answer or a problem, one log line,
    never an error line or a traceback, and never the client's other header values."""
    logged_before = len(proxy.logs.data)
    request = START + SECRET_FIELDS + b"X-Gen: " + value + b"\r\nConnection: close\r\n\r\n"
    answer, _ = await send_raw(proxy, request)
    assert answer.status is not None
    if answer.status >= 400:
        assert answer.headers["Content-Type"] == PROBLEM_JSON, answer.raw[:300]
    new = proxy.logs.data[logged_before:]
    lines = [orjson.loads(line) for line in new.splitlines() if line.strip()]
    assert [line["event"] for line in lines if line["event"] == "request_completed"] == [
        "request_completed"
    ]
    assert [line for line in lines if line.get("level") in ("error", "critical")] == []
    for secret in VALUES:
        assert secret.encode() not in new
