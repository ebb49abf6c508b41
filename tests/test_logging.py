"""Logs: one JSON line per call with every contract field; no secret anywhere."""

from __future__ import annotations

import asyncio

import aiohttp

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
