"""Logs: one JSON line per call with every contract field; no secret anywhere."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import gc
import io
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from hypothesis import example, given, settings
from hypothesis import strategies as st
from yarl import URL

from proxy import events
from proxy.logs import CALL_ID, configure_logging
from proxy.redact import Redactor
from proxy.secret import Secret
from proxy.tokens import MIN_AGE_TO_INVALIDATE
from tests.conftest import (
    ProxyFactory,
    RunningEmulator,
    RunningProxy,
    all_secrets,
    free_port,
    make_config,
)

CONTRACT_FIELDS = {
    "event",
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "route",
    "upstream",
    "bytes_in",
    "bytes_out",
    "client",
    "token",
}


async def test_every_call_writes_one_line_with_every_field(proxy: RunningProxy) -> None:
    """A proxied call logs one request_completed line carrying the contract's fields."""
    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.at("/echo/log?secret=not-logged"), data=b"12345") as response,
    ):
        assert response.status == 200
        request_id = response.headers["X-Request-Id"]
        size = len(await response.read())
    (line,) = proxy.logs.events("request_completed")
    assert set(line) >= CONTRACT_FIELDS
    assert line["request_id"] == request_id
    assert (line["method"], line["path"], line["status"]) == ("POST", "/echo/log", 200)
    assert (line["bytes_in"], line["bytes_out"]) == (5, size)
    assert line["client"] == "127.0.0.1"
    assert line["route"] == "/"
    assert line["token"] in {"cached", "fetched"}
    assert line["duration_ms"] > 0


async def test_failed_calls_are_logged_too(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """A call that fails upstream still writes its line, with the status the client got."""
    proxy = await start_proxy(make_config(emulator.token_url, f"http://127.0.0.1:{free_port()}"))
    async with aiohttp.ClientSession() as client, client.get(proxy.at("/x")) as response:
        assert response.status == 502
    (line,) = proxy.logs.events("request_completed")
    assert line["status"] == 502


async def test_no_secret_in_any_output_at_debug_level(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """Successes, token failures, refusals and 401 replays at debug: no secret anywhere."""
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    seen: list[str] = []
    async with aiohttp.ClientSession() as client:

        async def call(method: str, path: str, **kwargs: object) -> None:
            async with client.request(method, proxy.at(path), **kwargs) as response:  # type: ignore[arg-type]
                seen.append(str(response.headers) + await response.text())

        await call("GET", "/epayment/v1/payments/abc12345")
        emulator.state.tokens.clear()
        await call("GET", "/epayment/v1/payments/abc12345")
        await call("POST", "/accesstoken/get")
        await call("GET", "/-/metrics")
        await call("GET", "/-/ready")
        await asyncio.sleep(MIN_AGE_TO_INVALIDATE)
        emulator.state.tokens.clear()
        emulator.state.faults.token = "error500"
        await call("POST", "/epayment/v1/payments", data=b"x" * 70_000)
        await call("GET", "/epayment/v1/payments/abc12345")
    tokens = list(emulator.state.tokens) + [
        v for r in emulator.state.received for k, v in r.headers if k.lower() == "authorization"
    ]
    output = proxy.logs.text() + "".join(seen)
    assert tokens
    for secret in all_secrets(proxy.config, *tokens):
        assert secret not in output
    assert "token_refresh_failed" in output


async def test_a_path_with_bytes_that_are_not_utf8_is_served_and_logged(
    proxy: RunningProxy,
) -> None:
    """``%FF`` and a broken UTF-8 sequence in the path: the call is forwarded and its
    line logged with the path as sent (the redactor decodes such paths to search them)."""
    path = "/echo/%FF%C3(%e"
    async with (
        aiohttp.ClientSession() as client,
        client.get(URL(proxy.at(path), encoded=True)) as response,
    ):
        assert response.status == 200
    (line,) = [line for line in proxy.logs.events("request_completed") if line["status"] == 200]
    assert line["path"] == path


def test_redactor_masks_plain_lines_and_leaves_clean_ones_alone() -> None:
    """A secret inside a plain string or under a sensitive key is masked; clean lines pass."""
    redactor = Redactor([Secret("s3cret-value")])
    clean = {"event": "x", "path": "/a", "status": 200}
    assert redactor(None, "info", dict(clean)) == clean
    leaky = redactor(None, "info", {"event": "x", "detail": "key=s3cret-value;", "n": 1})
    assert leaky["detail"] == "key=***;"
    assert redactor(None, "info", {"Authorization": "Bearer abc"})["Authorization"] == "***"
    nested = redactor(None, "info", {"routes": ["s3cret-value"]})
    assert nested["routes"] == ["***"]


# ----- secrets in the forms an echo may take


@st.composite
def escaped(draw: st.DrawFn, secret: str) -> str:
    """``secret`` with each character as written, JSON-escaped or percent-encoded, the
    hex digits in either case. A ``%`` or backslash among escapes is itself escaped,
    as any encoder writes it (else it would read as the start of an escape)."""
    out = ""
    for char in secret:
        way = draw(st.sampled_from(["plain", "json", "percent"]))
        if way == "plain" and char in "%\\":
            way = "percent"
        case = draw(st.sampled_from([str.lower, str.upper]))
        if way == "json":
            units = char.encode("utf-16-be", "surrogatepass").hex()
            out += "".join("\\u" + case(units[i : i + 4]) for i in range(0, len(units), 4))
        elif way == "percent":
            out += "".join("%" + case(f"{byte:02x}") for byte in char.encode())
        else:
            out += char
    return out


SECRET_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=8, max_size=40
)
#: Text around a secret that can neither start nor end an escape or the secret itself.
AROUND = st.text(st.sampled_from(" <>|"), max_size=6)


@pytest.mark.parametrize(
    ("secret", "written"),
    [("0000000%", "0000000%25"), ("abc\\def", "abc\\\\def"), ("0000000\\", "0000000\\u005c")],
)
def test_a_secret_whose_escape_starts_with_its_own_text_is_masked_whole(
    secret: str, written: str
) -> None:
    """A '%' (or backslash) of the secret written escaped: the whole escape is masked,
    not the secret's plain start with the escape's tail left behind (hypothesis found)."""
    assert Redactor([Secret(secret)]).redact_text(f"<{written}>") == "<***>"


@settings(max_examples=300, deadline=None)
@given(SECRET_TEXT, st.data(), AROUND, AROUND)
@example("demo-client-secret", None, "<", ">")
def test_a_secret_is_masked_with_any_of_its_characters_escaped(
    secret: str, data: st.DataObject | None, before: str, after: str
) -> None:
    """Each character written as is, as ``\\uXXXX`` or as ``%XX`` (either case): masked."""
    if data is None:  # the explicit example: every character escaped
        written = "".join(f"\\u{ord(c):04x}" for c in secret)
    else:
        written = data.draw(escaped(secret))
    redactor = Redactor([Secret(secret), Secret("an-unrelated-secret")])
    text = before + written + after
    assert redactor.redact_text(text) == before + "***" + after
    line = redactor(None, "info", {"event": "x", "detail": text})
    assert line["detail"] == before + "***" + after


@settings(max_examples=200, deadline=None)
@given(SECRET_TEXT, st.sampled_from(["standard", "urlsafe"]), st.booleans(), AROUND)
def test_a_secret_is_masked_in_base64(
    secret: str, alphabet: str, padded: bool, before: str
) -> None:
    """The secret alone in base64, standard or URL-safe, with or without padding."""
    encode = base64.b64encode if alphabet == "standard" else base64.urlsafe_b64encode
    written = encode(secret.encode()).decode()
    written = written if padded else written.rstrip("=")
    redacted = Redactor([Secret(secret)]).redact_text(f"{before}Basic {written}")
    assert written.rstrip("=") not in redacted
    assert redacted.startswith(f"{before}Basic ***")


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from([*"%\\u0adfFC3(/ ", "\udcff", "\ud83d", "é"]), max_size=24))
@example("%FF")
@example("%C3(")
@example("\\ud83d%ed%a0%80")
def test_any_text_passes_the_redactor_unchanged_when_it_hides_no_secret(text: str) -> None:
    """Broken escapes, bytes that are not UTF-8 when decoded, lone surrogates: the text
    comes back as it was, never an exception (a log line must not fail a call)."""
    redactor = Redactor([Secret("demo-client-secret")])
    assert redactor.redact_text(text) == text
    assert redactor(None, "info", {"event": "x", "path": text}) == {"event": "x", "path": text}


def test_a_clean_line_with_escapes_is_left_alone() -> None:
    """Percent-encodings and JSON escapes that hide no secret change nothing."""
    redactor = Redactor([Secret("demo-client-secret")])
    line = {"event": "x", "path": "/a%20b/%64emo", "detail": "\\u0041\\/ 100%"}
    assert redactor(None, "info", dict(line)) == line


ODD_SECRET = 'sk"with\\escapes/and-ünïcode\t'  # a secret JSON must escape to write


@pytest.fixture
def json_lines() -> Iterator[io.BytesIO]:
    """structlog set up as production does, writing JSON lines to a buffer."""
    saved = structlog.get_config()
    out = io.BytesIO()
    redactor = Redactor([Secret("s3cret-value"), Secret(ODD_SECRET)])
    configure_logging("info", "json", redactor, out, cache=False)
    yield out
    structlog.configure(**saved)


def logged(out: io.BytesIO, **fields: Any) -> dict[str, Any]:
    structlog.get_logger("t").info("x", **fields)
    line = out.getvalue().splitlines()[-1]
    assert b"s3cret-value" not in line
    assert orjson.dumps(ODD_SECRET)[1:-1] not in line
    result: dict[str, Any] = orjson.loads(line)
    return result


def test_json_line_masks_a_secret_inside_a_plain_string(json_lines: io.BytesIO) -> None:
    """A known secret inside an ordinary string field is masked in the written line."""
    assert logged(json_lines, detail="key=s3cret-value;", n=1)["detail"] == "key=***;"


def test_json_line_masks_a_secret_that_json_escapes(json_lines: io.BytesIO) -> None:
    """A secret with quotes, backslashes, control and non-ASCII characters is found too."""
    line = logged(json_lines, detail=f"<{ODD_SECRET}>")
    assert line["detail"] == "<***>"


def test_json_line_masks_sensitive_and_nested_fields(json_lines: io.BytesIO) -> None:
    """Sensitive keys, nested ones included, and secrets in lists are masked."""
    line = logged(
        json_lines,
        authorization="Bearer not-a-known-secret",
        headers={"Ocp-Apim-Subscription-Key": "also-unknown"},
        routes=["s3cret-value"],
    )
    assert line["authorization"] == "***"
    assert line["headers"] == {"Ocp-Apim-Subscription-Key": "***"}
    assert line["routes"] == ["***"]


def test_json_line_without_secrets_is_written_unchanged(json_lines: io.BytesIO) -> None:
    """A clean line keeps every field and value as given."""
    line = logged(json_lines, path="/a/b", status=200, ok=True, none=None, ms=1.5)
    assert {k: line[k] for k in ("path", "status", "ok", "none", "ms")} == {
        "path": "/a/b",
        "status": 200,
        "ok": True,
        "none": None,
        "ms": 1.5,
    }


def test_lines_logged_during_a_call_carry_its_request_id(json_lines: io.BytesIO) -> None:
    """Any line logged while a call is handled names the call; lines outside do not."""

    def during_a_call() -> dict[str, Any]:
        CALL_ID.set("rid-0001")
        return logged(json_lines, note="inside")

    assert contextvars.copy_context().run(during_a_call)["request_id"] == "rid-0001"
    assert "request_id" not in logged(json_lines, note="outside")


def test_an_exception_is_logged_as_data_without_local_variables(
    json_lines: io.BytesIO,
) -> None:
    """A logged exception carries its type and frames, never the frames' local values."""
    secret_local = "s3cret-value-in-a-local"  # noqa: F841 - what a traceback must not show
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("t").exception("failed")
    line = orjson.loads(json_lines.getvalue().splitlines()[-1])
    (exc,) = line["exception"]
    assert exc["exc_type"] == "ValueError"
    assert exc["frames"]
    assert b"in-a-local" not in json_lines.getvalue()
    assert all("locals" not in frame for frame in exc["frames"])


# ------------------------------------------- every event, both formats, never a failure

EVENTS = sorted(v for k, v in vars(events).items() if k.isupper() and isinstance(v, str))
ODD_FIELDS: dict[str, Any] = {
    "routes": ["/ -> http://x (bearer)", 1, None],
    "nested": {"a": [1, {"b": 2.5}], "c": None},
    "raw": b"\xff\x00bytes",
    "big": 10**30,
    "keys": {1: "int key", (2, 3): "tuple key"},
    "exception": ["a list where a string is expected"],
    "text": "ünïcode\n\ttabs",
}


def _boom() -> BaseException:
    try:
        raise ValueError("TokenFetchError('token endpoint answered 401: s3cret-value')")
    except ValueError as exc:
        return exc


def emit_everything() -> None:
    """Every event the proxy logs, with odd values, and the stdlib records of aiohttp
    and asyncio (with tracebacks) that reach the same renderers."""
    log = structlog.get_logger("proxy.test")
    for name in EVENTS:
        log.warning(name, status=200, error="x", **ODD_FIELDS)
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        log.exception(events.INTERNAL_ERROR, path="/a")
    logging.getLogger("asyncio").error(
        "Task exception was never retrieved\nfuture: <Task finished>", exc_info=_boom()
    )
    logging.getLogger("aiohttp.server").exception("Error handling request", exc_info=_boom())
    logging.getLogger("aiohttp.client").warning("a %s with %d args", "record", 2)
    logging.getLogger("aiohttp.web").warning("a bad %d format", "not a number")
    logging.getLogger("py.warnings").warning(["not", "a", "string"])


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_no_event_or_stdlib_record_makes_a_renderer_fail(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every event the proxy emits, odd values, asyncio's and aiohttp's records with
    tracebacks: each is written, in both formats, and none makes logging fail."""
    saved = structlog.get_config()
    out = io.BytesIO()
    configure_logging("debug", fmt, Redactor([Secret("s3cret-value")]), out, cache=False)
    try:
        emit_everything()
    finally:
        structlog.configure(**saved)
    text = out.getvalue().decode()
    assert "--- Logging error ---" not in capsys.readouterr().err
    for name in EVENTS:
        assert name in text
    assert "Task exception was never retrieved" in text
    assert "Error handling request" in text
    assert "s3cret-value" not in text
    if fmt == "json":
        lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
        assert len(lines) >= len(EVENTS) + 5


@pytest.mark.parametrize("fault", ["wrong-secret", "unreachable"])
async def test_a_token_endpoint_failing_at_start_logs_no_asyncio_error(
    emulator: RunningEmulator, start_proxy: ProxyFactory, fault: str
) -> None:
    """A wrong client_secret or an unreachable token URL at start-up: token_refresh_failed
    warnings, and no asyncio 'Task exception was never retrieved' at level error."""
    if fault == "wrong-secret":
        config = make_config(
            emulator.token_url, emulator.url, credentials={"client_secret": "a-wrong-secret"}
        )
    else:
        config = make_config(f"http://127.0.0.1:{free_port()}/accesstoken/get", emulator.url)
    proxy = await start_proxy(config)
    for _ in range(100):
        if proxy.logs.events("token_refresh_failed"):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    gc.collect()
    await asyncio.sleep(0)

    assert proxy.logs.events("token_refresh_failed")
    assert "never retrieved" not in proxy.logs.text()
    assert [line for line in proxy.logs.lines() if line["level"] == "error"] == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/accesstoken/get", 200),  # a legacy token call, answered with a placeholder
        ("GET", "/nowhere", 404),  # no route
        ("CONNECT", "/echo/x", 405),  # a problem answer
    ],
)
async def test_answers_the_proxy_makes_itself_log_their_real_size(
    emulator: RunningEmulator, start_proxy: ProxyFactory, method: str, path: str, status: int
) -> None:
    """bytes_out of a token, 404 or problem answer is the body the client received."""
    config = make_config(emulator.token_url, emulator.url, route={"prefix": "/echo/"})
    proxy = await start_proxy(config)
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, proxy.at(path)) as response,
    ):
        assert response.status == status
        size = len(await response.read())
    (line,) = proxy.logs.events("request_completed")
    assert size > 0
    assert line["bytes_out"] == size
