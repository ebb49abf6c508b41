"""The fault matrix: every fault the emulator can play, what each party sees, and recovery.

Each test switches one fault on in the emulator (or leaves an upstream port empty) and
shows four things: the answer the client gets, the ``request_completed`` log line (its
``error`` field), the count in ``/-/metrics``, and that the proxy works again once the
fault clears, with no restart. ``docs/fault-matrix.md`` is this file as a table; every
row there names the test here that backs it.

Timeouts are short through the config (``read_timeout``, ``token_timeout``) and every
wait is a bounded poll; no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from proxy.emulator import create_emulator
from proxy.tokenfetch import MAX_LIFETIME
from proxy.tokens import MIN_AGE_TO_INVALIDATE
from tests.conftest import (
    EmulatorFactory,
    ProxyFactory,
    RunningEmulator,
    RunningProxy,
    free_port,
    make_config,
)

PAYMENT = "/epayment/v1/payments/no-such-payment-1"  # authenticated; 404 means auth passed
PROBLEM_FIELDS = {"type", "title", "status", "detail", "request_id"}
DOWNLOAD_SIZE = 1_000_000  # several 64 KiB chunks: body faults strike after the first
SHORT = 0.25  # read_timeout / token_timeout in seconds for the stall and slow faults
STALL = 1.0  # how long the emulator stalls: four times the timeout, short enough to drain
KIB = 1024


# ---------------------------------------------------------------------------- helpers


async def get(proxy: RunningProxy, path: str) -> tuple[int, CIMultiDict[str], bytes]:
    """One GET through the proxy: status, headers, whole body."""
    async with aiohttp.ClientSession() as client, client.get(proxy.at(path)) as response:
        return response.status, CIMultiDict(response.headers), await response.read()


async def status_of(proxy: RunningProxy, path: str = PAYMENT) -> int:
    return (await get(proxy, path))[0]


async def wait_until(
    check: Callable[[], Awaitable[bool]], what: str, seconds: float = 10.0, step: float = 0.05
) -> None:
    """Poll ``check`` until true; bounded both by count and by time."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / step) + 1):
        if await check():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_for_status(proxy: RunningProxy, want: int, path: str = PAYMENT) -> None:
    async def reached() -> bool:
        return await status_of(proxy, path) == want

    await wait_until(reached, f"{path} to answer {want}", seconds=15.0, step=0.1)


async def metric(proxy: RunningProxy, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    status, _, body = await get(proxy, "/-/metrics")
    assert status == 200
    total = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def calls(proxy: RunningProxy) -> list[dict[str, Any]]:
    """The ``request_completed`` lines of proxied calls (not of /-/ admin calls)."""
    return [
        line
        for line in proxy.logs.events("request_completed")
        if not str(line.get("path", "")).startswith("/-/")
    ]


def problem_of(headers: CIMultiDict[str], body: bytes) -> dict[str, Any]:
    assert headers["Content-Type"].startswith("application/problem+json")
    problem: dict[str, Any] = orjson.loads(body)
    assert set(problem) == PROBLEM_FIELDS
    assert problem["request_id"] == headers["X-Request-Id"]
    return problem


def refresh_failures(proxy: RunningProxy) -> list[dict[str, Any]]:
    return proxy.logs.events("token_refresh_failed")


# ------------------------------------------------------------- token endpoint faults


TOKEN_OUTAGES = [
    pytest.param(
        {"token": "down"},
        "token endpoint unreachable: ServerDisconnectedError",
        id="token-endpoint-down",
    ),
    pytest.param(
        {"token": "slow", "token_delay": STALL},
        "token endpoint unreachable: TimeoutError",
        id="token-endpoint-slower-than-token_timeout",
    ),
    pytest.param({"token": "error500"}, "token endpoint answered 500", id="token-endpoint-5xx"),
    pytest.param({"token": "invalid_json"}, "token response is not JSON", id="token-invalid-json"),
    pytest.param(
        {"token": "missing_fields"},
        "token response has no access_token",
        id="token-missing-fields",
    ),
    pytest.param(
        {"expires_in_override": 0},
        "token response has a lifetime of zero or less",
        id="token-expires_in-zero",
    ),
    pytest.param(
        {"expires_in_text": "nan"},
        "token response has a lifetime that is not a finite number",
        id="token-expires_in-nan",
    ),
]


@pytest.mark.parametrize(("faults", "logged_error"), TOKEN_OUTAGES)
async def test_token_fault_without_a_held_token_gives_503_and_heals(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    faults: dict[str, Any],
    logged_error: str,
) -> None:
    """No token can be had: 503 + Retry-After, logged and counted; fine once it clears."""
    for name, value in faults.items():
        setattr(emulator.state.faults, name, value)
    config = make_config(emulator.token_url, emulator.url, credentials={"token_timeout": SHORT})
    proxy = await start_proxy(config)

    status, headers, body = await get(proxy, PAYMENT)

    assert status == 503
    assert int(headers["Retry-After"]) >= 1
    assert problem_of(headers, body)["status"] == 503
    assert [r for r in emulator.state.received if r.raw_path == PAYMENT] == []
    (line,) = calls(proxy)
    assert (line["status"], line["error"]) == (503, "token_unavailable")
    assert refresh_failures(proxy)
    assert all(event["error"].startswith(logged_error) for event in refresh_failures(proxy))
    assert await metric(proxy, "vipps_proxy_token_fetches_total", result="error") >= 1
    assert await metric(proxy, "vipps_proxy_token_fetches_total", result="ok") == 0
    assert await metric(proxy, "vipps_proxy_requests_total", status="503") == 1
    assert [line for line in proxy.logs.lines() if line["level"] == "error"] == []

    emulator.state.faults.clear()
    await wait_for_status(proxy, 404)
    assert await metric(proxy, "vipps_proxy_token_fetches_total", result="ok") == 1
    assert calls(proxy)[-1]["token"] in {"fetched", "cached"}
    assert "error" not in calls(proxy)[-1]


async def test_start_up_token_failure_logs_warnings_only_and_heals(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """The token endpoint refuses the first fetches at start-up: warnings, never an
    error-level line (no asyncio 'Task exception was never retrieved'); not ready,
    503 to calls; healed by the first good fetch."""
    emulator.state.faults.token = "error500"
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))

    async def failed_twice() -> bool:
        return len(refresh_failures(proxy)) >= 2

    await wait_until(failed_twice, "two failed fetches")
    assert (await get(proxy, "/-/ready"))[0] == 503
    assert await status_of(proxy) == 503
    assert await metric(proxy, "vipps_proxy_token_fetches_total", result="error") >= 2
    assert all(event["level"] == "warning" for event in refresh_failures(proxy))
    assert [line for line in proxy.logs.lines() if line["level"] == "error"] == []
    assert "never retrieved" not in proxy.logs.text()

    emulator.state.faults.clear()
    await wait_for_status(proxy, 404)
    assert (await get(proxy, "/-/ready"))[0] == 200


async def test_a_token_answer_in_two_pieces_is_read_whole(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """A token answer written in two pieces 0.2 s apart (a gateway, TLS records) is
    read whole: calls succeed, one fetch, no failure."""
    emulator.state.faults.token = "split_answer"
    emulator.state.faults.token_delay = 0.2
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))

    assert await status_of(proxy) == 404
    assert refresh_failures(proxy) == []
    assert len(proxy.logs.events("token_fetched")) == 1
    assert await metric(proxy, "vipps_proxy_token_fetches_total", result="ok") == 1
    assert await metric(proxy, "vipps_proxy_token_fetches_total", result="error") == 0


async def test_tiny_lifetimes_give_503_never_an_expired_token_and_heal(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """Tokens that expire before they can be used (1e-9 s): calls get 503 + Retry-After,
    no expired token goes upstream, the endpoint is asked at most once a second; a
    normal lifetime heals."""
    emulator.state.faults.expires_in_text = "1e-09"
    started = time.monotonic()
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    answers = [await get(proxy, PAYMENT) for _ in range(5)]
    elapsed = time.monotonic() - started

    assert {status for status, _, _ in answers} == {503}
    assert all(int(headers["Retry-After"]) >= 1 for _, headers, _ in answers)
    assert [r for r in emulator.state.received if r.raw_path == PAYMENT] == []
    assert emulator.state.token_requests["accesstoken"] <= int(elapsed) + 1
    assert {line["error"] for line in calls(proxy)} == {"token_unavailable"}
    assert await metric(proxy, "vipps_proxy_requests_total", status="503") == 5

    emulator.state.faults.clear()
    await wait_for_status(proxy, 404)


async def test_a_401_for_the_subscription_key_is_relayed_without_a_fetch(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """Vipps refusing our subscription key (userinfo refuses any): its 401 reaches the
    client as sent, the token is kept and nothing is fetched or replayed."""
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    assert await status_of(proxy) == 404
    await asyncio.sleep(MIN_AGE_TO_INVALIDATE)  # old enough that a token 401 would drop it

    status, _, body = await get(proxy, "/vipps-userinfo-api/userinfo/x")

    assert status == 401
    assert orjson.loads(body)["message"].startswith("Access denied due to invalid subscription key")
    line = calls(proxy)[-1]
    assert (line["status"], line["error"]) == (401, "upstream_rejected_subscription_key")
    assert "replayed" not in line
    assert proxy.logs.events("token_rejected_by_upstream") == []
    assert await metric(proxy, "vipps_proxy_token_rejections_total") == 0
    assert await metric(proxy, "vipps_proxy_token_fetches_total", result="ok") == 1
    assert await metric(proxy, "vipps_proxy_requests_total", status="401") == 1
    assert await status_of(proxy) == 404  # the same token serves the next call


async def test_tiny_expires_in_keeps_serving_with_bounded_refreshes(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """1-second tokens: every call still succeeds, refreshes stay near one per second."""
    emulator.state.faults.expires_in_override = 1
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    started = time.monotonic()
    statuses = []
    for _ in range(30):
        statuses.append(await status_of(proxy))
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - started

    assert set(statuses) == {404}  # never Vipps's 401, never our 503
    fetched = proxy.logs.events("token_fetched")
    assert len(fetched) >= 2  # the tiny token was really refreshed
    assert {event["valid_for_s"] for event in fetched} == {1}
    # No hot loop: a 1-second token is fetched about once a second, not per call (a hot
    # loop is dozens a second). The bound grows with the time taken, so a busy machine
    # that stretches the run cannot break it; 3 a second leaves room for a fetch that
    # outlived its own second (9 in 3.3 s were seen on a loaded machine).
    assert emulator.state.token_requests["accesstoken"] <= 3 * elapsed + 3
    assert proxy.logs.events("token_rejected_by_upstream") == []
    assert await metric(proxy, "vipps_proxy_token_fetches_total", result="error") == 0
    assert await metric(proxy, "vipps_proxy_token_fetches_total", result="ok") == len(fetched)

    emulator.state.faults.clear()

    async def long_token_fetched() -> bool:
        return bool(proxy.logs.events("token_fetched")[-1]["valid_for_s"] > 60)

    await wait_until(long_token_fetched, "a token with the normal lifetime")
    assert await status_of(proxy) == 404


async def test_huge_expires_in_is_capped_and_a_401_still_refreshes(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """A billion-second token is trusted for 7 days at most; Vipps's 401 replaces it."""
    emulator.state.faults.expires_in_override = 10**9
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    assert await status_of(proxy) == 404
    (fetched,) = proxy.logs.events("token_fetched")
    assert fetched["valid_for_s"] <= MAX_LIFETIME

    emulator.state.faults.clear()
    await asyncio.sleep(MIN_AGE_TO_INVALIDATE)  # a brand-new token is never dropped
    emulator.state.tokens.clear()  # Vipps revokes the long-lived token

    assert await status_of(proxy) == 404  # replayed with a fresh token, unseen
    last = calls(proxy)[-1]
    assert (last["status"], last["replayed"]) == (404, "true")
    assert "error" not in last
    assert len(proxy.logs.events("token_rejected_by_upstream")) == 1
    assert await metric(proxy, "vipps_proxy_token_rejections_total") == 1
    assert await metric(proxy, "vipps_proxy_token_fetches_total", result="ok") == 2
    assert proxy.logs.events("token_fetched")[-1]["valid_for_s"] < 3600


# ---------------------------------------------------------------- token resilience


async def held_token_then_outage(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory, lifetime: float
) -> tuple[RunningEmulator, RunningProxy]:
    """A proxy holding a fresh ``lifetime``-second token whose endpoint then goes down."""
    emulator = await start_emulator(token_lifetime=lifetime)
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    assert await status_of(proxy) == 404
    emulator.state.faults.token = "down"
    return emulator, proxy


async def test_token_outage_is_invisible_while_a_valid_token_is_held(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory
) -> None:
    """Background refreshes fail, yet every call made with the held token succeeds."""
    emulator, proxy = await held_token_then_outage(start_emulator, start_proxy, 4.0)
    statuses = []
    for _ in range(200):  # bounded; ends after two failed refreshes (~2.5 s of 3.6 s)
        statuses.append(await status_of(proxy))
        if len(refresh_failures(proxy)) >= 2:
            break
        await asyncio.sleep(0.05)

    assert len(refresh_failures(proxy)) >= 2
    assert emulator.state.token_requests["accesstoken"] >= 3  # the endpoint really failed
    assert all(event["holding_valid_token"] for event in refresh_failures(proxy))
    assert set(statuses) == {404}
    assert all("error" not in line for line in calls(proxy))
    assert await metric(proxy, "vipps_proxy_requests_total", status="503") == 0
    assert await metric(proxy, "vipps_proxy_token_fetches_total", result="error") >= 2


async def test_each_failed_refresh_is_logged_once(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory
) -> None:
    """One token_refresh_failed per attempt at the endpoint, not per call."""
    emulator, proxy = await held_token_then_outage(start_emulator, start_proxy, 4.0)
    made = 0
    for _ in range(200):  # bounded; ends after three failed refreshes
        await status_of(proxy)
        made += 1
        if len(refresh_failures(proxy)) >= 3:
            break
        await asyncio.sleep(0.02)

    failures = refresh_failures(proxy)
    attempts_during_outage = emulator.state.token_requests["accesstoken"] - 1
    assert len(failures) == attempts_during_outage >= 3
    assert made > len(failures)  # many calls, one log line per attempt only
    assert [event["attempt"] for event in failures] == list(range(1, len(failures) + 1))
    counted = await metric(proxy, "vipps_proxy_token_fetches_total", result="error")
    assert counted == len(refresh_failures(proxy))


async def test_expired_token_in_an_outage_gives_503_until_a_fetch_succeeds(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory
) -> None:
    """Held token expires while the endpoint is down: 503 + Retry-After, then healed."""
    emulator, proxy = await held_token_then_outage(start_emulator, start_proxy, 2.0)
    answered_by_vipps = 1  # the call that fetched the token
    for _ in range(100):  # bounded: 10 s; the token expires after 1.8 s
        status = await status_of(proxy)
        if status == 503:
            break
        assert status == 404
        answered_by_vipps += 1
        await asyncio.sleep(0.1)
    status, headers, body = await get(proxy, PAYMENT)  # still down: still 503
    assert status == 503
    assert int(headers["Retry-After"]) >= 1
    assert problem_of(headers, body)["status"] == 503
    assert calls(proxy)[-1]["error"] == "token_unavailable"
    assert await metric(proxy, "vipps_proxy_requests_total", status="503") >= 2
    received = [r.raw_path for r in emulator.state.received]
    assert received.count(PAYMENT) == answered_by_vipps  # no 503 call went out expired

    emulator.state.faults.clear()
    await wait_for_status(proxy, 404)
    assert "error" not in calls(proxy)[-1]


async def test_ready_turns_503_when_the_token_expires_in_an_outage_and_back(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory
) -> None:
    """/-/ready: 200 while the held token is valid, 503 once it expired, 200 when healed."""
    emulator, proxy = await held_token_then_outage(start_emulator, start_proxy, 3.0)

    async def failing_refresh_seen() -> bool:
        return bool(refresh_failures(proxy))

    await wait_until(failing_refresh_seen, "a failed refresh")  # ~1.5 s; expiry at 2.7 s
    assert refresh_failures(proxy)[0]["holding_valid_token"]
    assert await status_of(proxy, "/-/ready") == 200  # failing, but a token is held
    await wait_for_status(proxy, 503, "/-/ready")
    status, headers, body = await get(proxy, "/-/ready")
    assert status == 503
    assert "Retry-After" in headers
    assert orjson.loads(body)["credentials_without_token"] == ["main"]

    emulator.state.faults.clear()
    await wait_for_status(proxy, 200, "/-/ready")
    assert await status_of(proxy) == 404


# --------------------------------------------------------------------- upstream faults


@pytest.mark.parametrize(
    ("faults", "status", "error"),
    [
        pytest.param(
            {"api": "stall_headers", "api_delay": STALL}, 504, "read_timeout", id="stall-headers"
        ),
        pytest.param(
            {"api": "reset"}, 502, "upstream_ServerDisconnectedError", id="reset-before-answer"
        ),
    ],
)
async def test_upstream_fault_before_headers_gives_problem_and_heals(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    faults: dict[str, Any],
    status: int,
    error: str,
) -> None:
    """No answer from upstream: our own problem+json, logged and counted by kind."""
    config = make_config(emulator.token_url, emulator.url, route={"read_timeout": SHORT})
    proxy = await start_proxy(config)
    for name, value in faults.items():
        setattr(emulator.state.faults, name, value)

    got, headers, body = await get(proxy, "/echo/fault")

    assert got == status
    assert problem_of(headers, body)["status"] == status
    (line,) = calls(proxy)
    assert (line["status"], line["error"]) == (status, error)
    assert await metric(proxy, "vipps_proxy_upstream_errors_total", kind=error) == 1
    assert await metric(proxy, "vipps_proxy_requests_total", status=str(status)) == 1

    emulator.state.faults.clear()
    assert await status_of(proxy, "/echo/healed") == 200
    assert "error" not in calls(proxy)[-1]


async def test_upstream_refusing_connections_gives_502_and_heals(
    emulator: RunningEmulator, start_proxy: ProxyFactory, aiohttp_server: Any
) -> None:
    """Nothing listens upstream: 502 connect_failed; once Vipps listens again, calls pass."""
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    proxy = await start_proxy(make_config(emulator.token_url, upstream))

    status, headers, body = await get(proxy, "/echo/refused")

    assert status == 502
    assert problem_of(headers, body)["status"] == 502
    (line,) = calls(proxy)
    assert line["error"] == "connect_failed"
    assert await metric(proxy, "vipps_proxy_upstream_errors_total", kind="connect_failed") == 1
    assert await metric(proxy, "vipps_proxy_requests_total", status="502") == 1

    await aiohttp_server(create_emulator(), host="127.0.0.1", port=port)
    assert await status_of(proxy, "/echo/healed") == 200
    assert "error" not in calls(proxy)[-1]


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        pytest.param({"api": "reset_mid_body"}, "upstream_reset_mid_body", id="reset-mid-body"),
        pytest.param(
            {"api": "stall_body", "api_delay": STALL}, "read_timeout_mid_body", id="stall-mid-body"
        ),
    ],
)
async def test_upstream_fault_mid_body_aborts_the_stream_and_heals(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    faults: dict[str, Any],
    error: str,
) -> None:
    """Headers already went out: the client's stream is cut short, never completed falsely."""
    config = make_config(emulator.token_url, emulator.url, route={"read_timeout": SHORT})
    proxy = await start_proxy(config)
    for name, value in faults.items():
        setattr(emulator.state.faults, name, value)
    path = f"/download/{DOWNLOAD_SIZE}"

    async with aiohttp.ClientSession() as client, client.get(proxy.at(path)) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()

    async def logged() -> bool:
        return bool(calls(proxy))

    await wait_until(logged, "the call's log line")
    (line,) = calls(proxy)
    assert (line["status"], line["error"]) == (200, error)
    assert 0 < line["bytes_out"] < DOWNLOAD_SIZE
    assert await metric(proxy, "vipps_proxy_upstream_errors_total", kind=error) == 1
    assert await metric(proxy, "vipps_proxy_requests_total", status="200") == 1

    emulator.state.faults.clear()
    status, _, body = await get(proxy, path)
    assert (status, len(body)) == (200, DOWNLOAD_SIZE)
    assert "error" not in calls(proxy)[-1]


@pytest.mark.parametrize(
    ("fault", "status"),
    [pytest.param("error500", 500, id="vipps-500"), pytest.param("error503", 503, id="vipps-503")],
)
async def test_vipps_5xx_passes_through_unchanged_and_heals(
    emulator: RunningEmulator, start_proxy: ProxyFactory, fault: str, status: int
) -> None:
    """Vipps's own 5xx is Vipps's answer: passed as it is, not an upstream error of ours."""
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    emulator.state.faults.api = fault  # type: ignore[assignment]

    got, headers, body = await get(proxy, "/echo/vipps-fails")

    assert got == status
    assert b"emulated fault" in body  # the emulator's own body, not a problem of ours
    assert "request_id" not in orjson.loads(body)
    if status == 503:
        assert headers["Retry-After"] == "1"  # Vipps's own header passes too
    (line,) = calls(proxy)
    assert line["status"] == status
    assert "error" not in line  # the proxy did not fail: Vipps answered
    assert await metric(proxy, "vipps_proxy_requests_total", status=str(status)) == 1
    assert await metric(proxy, "vipps_proxy_upstream_errors_total") == 0

    emulator.state.faults.clear()
    assert await status_of(proxy, "/echo/healed") == 200


# ------------------------------------------------------------ clients that go away


async def unauthenticated_proxy(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> RunningProxy:
    """A proxy whose route fetches no token, so every emulator connection carries a call."""
    config = make_config(emulator.token_url, emulator.url, route={"auth": "none"})
    return await start_proxy(config)


def upstream_connections(emulator: RunningEmulator) -> int:
    """Open connections at the emulator (the proxy's pooled ones included)."""
    return len(emulator.server.handler.connections)


async def wait_for_cleanup(proxy: RunningProxy, emulator: RunningEmulator) -> dict[str, Any]:
    """Wait until the upstream connection is closed and the call logged; its log line."""

    async def cleaned_up() -> bool:
        return upstream_connections(emulator) == 0 and bool(calls(proxy))

    await wait_until(cleaned_up, "the upstream connection to close", seconds=30.0)
    (line,) = calls(proxy)
    return line


async def test_client_leaving_mid_upload_cancels_the_upstream_call(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """Client gone after 256 KiB of a 64 MiB upload: the upstream connection closes at once."""
    proxy = await unauthenticated_proxy(emulator, start_proxy)
    declared = 64 * KIB * KIB
    _, writer = await asyncio.open_connection(*proxy.address)
    writer.write(
        f"PUT /echo/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n".encode()
        + b"x" * (256 * KIB)
    )
    await writer.drain()

    async def upstream_receiving() -> bool:
        return any(r.raw_path == "/echo/upload" for r in emulator.state.received)

    await wait_until(upstream_receiving, "the upload to reach the emulator")
    assert upstream_connections(emulator) == 1
    writer.transport.abort()

    line = await wait_for_cleanup(proxy, emulator)
    assert (line["status"], line["error"]) == (499, "client_disconnected")
    (received,) = [r for r in emulator.state.received if r.raw_path == "/echo/upload"]
    assert 0 < received.body_length < declared  # the emulator's handler ended, cut short
    assert await metric(proxy, "vipps_proxy_requests_total", status="499") == 1
    assert await metric(proxy, "vipps_proxy_upstream_errors_total") == 0  # the client's fault
    assert await metric(proxy, "vipps_proxy_in_flight_requests") == 1  # this scrape only
    assert await status_of(proxy, "/echo/after") == 200


async def test_client_leaving_mid_download_cancels_the_upstream_call(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """Client gone after the first bytes of a 1 GiB download: upstream connection closed."""
    proxy = await unauthenticated_proxy(emulator, start_proxy)
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(f"GET /download/{KIB**3} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(reader.readexactly(64 * KIB), 5)
    assert upstream_connections(emulator) == 1
    writer.transport.abort()

    line = await wait_for_cleanup(proxy, emulator)
    assert (line["status"], line["error"]) == (200, "client_disconnected")  # headers went out
    assert line["bytes_out"] < KIB**3
    assert await metric(proxy, "vipps_proxy_requests_total", status="200") == 1
    assert await metric(proxy, "vipps_proxy_upstream_errors_total") == 0  # the client's fault
    assert await metric(proxy, "vipps_proxy_in_flight_requests") == 1  # this scrape only
    assert await status_of(proxy, "/echo/after") == 200
