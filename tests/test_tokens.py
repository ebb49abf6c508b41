"""Tokens: one shared fetch, early refresh, 401 replay, outage answers and healing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.metrics import Metrics
from proxy.redact import Redactor
from proxy.tokenfetch import TokenFetchError, parse_token_response, token_times
from proxy.tokens import MIN_AGE_TO_INVALIDATE, Backoff, TokenProvider
from tests.conftest import (
    EmulatorFactory,
    LogSink,
    ProxyFactory,
    RunningEmulator,
    RunningProxy,
    make_config,
)

PAYMENT = "/epayment/v1/payments/no-such-payment-1"  # authenticated; 404 means auth passed


async def get_status(proxy: RunningProxy, path: str = PAYMENT) -> int:
    async with aiohttp.ClientSession() as client, client.get(proxy.at(path)) as response:
        await response.read()
        return response.status


async def wait_for_status(proxy: RunningProxy, want: int, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while (status := await get_status(proxy)) != want:
        assert time.monotonic() < deadline, f"still {status}, wanted {want}"
        await asyncio.sleep(0.2)


async def test_cold_burst_shares_one_token_fetch(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """300 calls arriving at a cold proxy cause exactly one token request."""
    server = {"max_connections_per_client": 300}  # all from 127.0.0.1
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url, server=server))
    connector = aiohttp.TCPConnector(limit=300)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one() -> int:
            async with client.get(proxy.at(PAYMENT)) as response:
                return response.status

        statuses = await asyncio.gather(*(one() for _ in range(300)))
    assert set(statuses) == {404}
    assert emulator.state.token_requests["accesstoken"] == 1


async def test_token_is_refreshed_before_it_expires(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory
) -> None:
    """With 3 s tokens, 5 s of calls see no 401: refreshes happen ahead of expiry."""
    emulator = await start_emulator(token_lifetime=3.0)
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    statuses = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        statuses.append(await get_status(proxy))
        await asyncio.sleep(0.05)
    assert set(statuses) == {404}
    assert emulator.state.token_requests["accesstoken"] >= 3
    assert proxy.logs.events("token_rejected_by_upstream") == []


async def test_upstream_401_refreshes_the_token_and_replays_once(
    proxy: RunningProxy, emulator: RunningEmulator
) -> None:
    """A token Vipps no longer accepts is replaced and the call replayed, unseen by the client."""
    assert await get_status(proxy) == 404
    await asyncio.sleep(MIN_AGE_TO_INVALIDATE)  # a brand-new token is never dropped
    emulator.state.tokens.clear()  # Vipps forgets every token it issued
    assert await get_status(proxy) == 404
    assert emulator.state.token_requests["accesstoken"] == 2
    (line,) = [e for e in proxy.logs.events("request_completed") if e.get("replayed")]
    assert line["status"] == 404


async def test_streamed_body_is_not_replayed_after_401(
    proxy: RunningProxy, emulator: RunningEmulator
) -> None:
    """A body too large to hold is sent once: the 401 goes back to the client."""
    assert await get_status(proxy) == 404
    await asyncio.sleep(MIN_AGE_TO_INVALIDATE)
    emulator.state.tokens.clear()
    body = b"{" + b" " * 100_000 + b"}"
    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.at("/epayment/v1/payments"), data=body) as response,
    ):
        assert response.status == 401
    assert await get_status(proxy) == 404  # the next call has a fresh token


async def test_token_outage_gives_503_with_retry_after_then_heals(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """No token to be had: 503 problem+json with Retry-After; healed without a restart."""
    emulator.state.faults.token = "error500"
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    async with aiohttp.ClientSession() as client, client.get(proxy.at(PAYMENT)) as response:
        assert response.status == 503
        assert response.content_type == "application/problem+json"
        assert int(response.headers["Retry-After"]) >= 1
        problem = await response.json()
    assert problem["status"] == 503
    assert problem["request_id"] == response.headers["X-Request-Id"]
    (line,) = proxy.logs.events("request_completed")
    assert (line["status"], line["token"]) == (503, "none")  # no token went anywhere
    emulator.state.faults.clear()
    await wait_for_status(proxy, 404)


async def test_expired_token_is_never_injected(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory
) -> None:
    """Once the only token has expired and no new one comes, calls get 503, not Vipps's 401."""
    emulator = await start_emulator(token_lifetime=1.5)
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    assert await get_status(proxy) == 404
    emulator.state.faults.token = "error500"
    await asyncio.sleep(1.6)
    assert await get_status(proxy) == 503
    received = [r for r in emulator.state.received if r.raw_path == PAYMENT]
    assert len(received) == 1  # the expired token never went upstream


@pytest.mark.parametrize(
    ("style", "path", "extra"),
    [
        ("jwt-token", "/api/access-token/jwt-token", {"resource": "https://api.vipps.no"}),
        ("oauth2", "/miami/v1/token", {}),
    ],
)
async def test_other_token_styles_work(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    style: str,
    path: str,
    extra: dict[str, str],
) -> None:
    """The jwt-token (JSON body) and oauth2 (Basic + form) styles fetch working tokens."""
    creds = {"token_style": style, **extra}
    config = make_config(emulator.url.with_path(path), emulator.url, credentials=creds)
    proxy = await start_proxy(config)
    assert await get_status(proxy) == 404
    assert emulator.state.token_requests[style] == 1  # type: ignore[index]


async def test_numeric_token_fields_are_understood(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory
) -> None:
    """A token response with numbers instead of strings works the same."""
    emulator = await start_emulator(expires_in_as_number=True)
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    assert await get_status(proxy) == 404


async def test_a_refused_new_token_is_not_dropped(
    proxy: RunningProxy, emulator: RunningEmulator
) -> None:
    """Vipps refusing a token it just issued costs no fetch: the 401 goes back as it is."""
    assert await get_status(proxy) == 404
    fetches = emulator.state.token_requests["accesstoken"]
    emulator.state.tokens.clear()
    assert await get_status(proxy) == 401
    assert emulator.state.token_requests["accesstoken"] == fetches


def test_token_response_numbers_may_be_strings_or_numbers() -> None:
    """expires_in "3600" and 3600 give the same lifetime."""
    a = parse_token_response(b'{"access_token":"abcd","expires_in":"3600"}', 100.0)
    b = parse_token_response(b'{"access_token":"abcd","expires_in":3600}', 100.0)
    assert (a.expires_at, a.refresh_at) == (b.expires_at, b.refresh_at)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"expires_in":"3600"}',
        b'{"access_token":"abcd"}',
        b'{"access_token":"abcd","expires_in":"soon"}',
        b'{"access_token":"abcd","expires_in":0}',
    ],
)
def test_malformed_token_responses_are_rejected(body: bytes) -> None:
    """Missing or malformed fields fail the fetch instead of caching a bad token."""
    with pytest.raises(TokenFetchError):
        parse_token_response(body, 0.0)


@pytest.mark.parametrize(
    ("lifetime", "refresh_at"),
    [
        (3600.0, 3240.0),
        (86400.0, 77760.0),
        (300.0, 240.0),  # the 60 s floor
        (4.0, 2.0),
        (100.0, 50.0),
        (101.0, 50.5),
    ],
)
def test_refresh_comes_ahead_of_expiry(lifetime: float, refresh_at: float) -> None:
    """Refresh at lifetime - max(60 s, 10 %), never later than half-life for short tokens."""
    expires, refresh = token_times(lifetime, 0.0)
    assert refresh == refresh_at
    assert refresh < expires < lifetime


async def test_refresh_retries_come_before_the_held_token_expires(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory
) -> None:
    """While a token is held, every failed refresh is retried before that token expires
    (tokens with a second or more left: attempts are at most one a second)."""
    emulator = await start_emulator(token_lifetime=8.0)
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    assert await get_status(proxy) == 404
    emulator.state.faults.token = "error500"

    def failures() -> list[dict[str, Any]]:
        found = proxy.logs.events("token_refresh_failed")
        return [e for e in found if e["holding_valid_token"]]

    # refresh due at 4 s, retries a second apart at most, token good to 7.2 s: three
    # failed refreshes while it is held (waited for, not timed: a busy machine is slow)
    async with asyncio.timeout(30):
        while len(failures()) < 3:  # noqa: ASYNC110 - a log line is no event to wait on
            await asyncio.sleep(0.05)
    assert all(e["retry_in_s"] < e["token_valid_for_s"] for e in failures())


# ------------------------------------------------ which 401s are about the token

INVALID_KEY_BODY = (
    b'{"statusCode": 401, "message": "Access denied due to invalid subscription key. '
    b'Make sure to provide a valid key for an active subscription."}'
)
REFUSALS = [
    pytest.param(
        b'{"statusCode":401,"message":"Access denied due to invalid token"}',
        {},
        "token",
        id="invalid-token",
    ),
    pytest.param(
        b'{"statusCode":401,"message":"Access denied due to missing token"}',
        {},
        "token",
        id="missing-token",
    ),
    pytest.param(
        b'{"statusCode":401,"message":"Access denied due to expired token"}',
        {},
        "token",
        id="expired-token",
    ),
    pytest.param(
        b"", {"WWW-Authenticate": 'Bearer error="invalid_token"'}, "token", id="www-authenticate"
    ),
    pytest.param(INVALID_KEY_BODY, {}, "upstream_rejected_subscription_key", id="invalid-key"),
    pytest.param(
        b'{"statusCode":401,"message":"Access denied due to missing subscription key."}',
        {},
        "upstream_rejected_subscription_key",
        id="missing-key",
    ),
    pytest.param(b'{"title":"Unauthorized","status":401}', {}, "upstream_unauthorized", id="other"),
    pytest.param(b"", {}, "upstream_unauthorized", id="empty"),
]


@pytest.mark.parametrize(("body", "headers", "cause"), REFUSALS)
async def test_only_a_401_about_the_token_drops_it_and_replays(
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    aiohttp_raw_server: Any,
    body: bytes,
    headers: dict[str, str],
    cause: str,
) -> None:
    """A 401 saying the token is bad is healed with a fresh one; any other 401 goes back
    to the client byte for byte, with no token fetch and a reason in its log line."""
    answered: list[int] = []

    async def handler(request: web.BaseRequest) -> web.Response:
        answered.append(1)
        if len(answered) == 2:
            return web.Response(status=401, body=body, headers=headers)
        return web.Response(text="ok")

    upstream = await aiohttp_raw_server(handler)
    proxy = await start_proxy(make_config(emulator.token_url, upstream.make_url("")))
    assert await get_status(proxy, "/a") == 200
    await asyncio.sleep(MIN_AGE_TO_INVALIDATE)  # old enough to be dropped, if it should be

    async with aiohttp.ClientSession() as client, client.get(proxy.at("/a")) as response:
        status, got = response.status, await response.read()

    line = proxy.logs.events("request_completed")[-1]
    if cause == "token":
        assert (status, line["replayed"]) == (200, "true")
        assert emulator.state.token_requests["accesstoken"] == 2
        assert len(proxy.logs.events("token_rejected_by_upstream")) == 1
    else:
        assert (status, got) == (401, body)
        assert response.headers.get("WWW-Authenticate") == headers.get("WWW-Authenticate")
        assert line["error"] == cause
        assert "replayed" not in line
        assert emulator.state.token_requests["accesstoken"] == 1
        assert proxy.logs.events("token_rejected_by_upstream") == []
        assert len(answered) == 2


async def test_userinfo_with_our_subscription_key_costs_no_token_fetch(
    proxy: RunningProxy, emulator: RunningEmulator
) -> None:
    """The demo's case: userinfo refuses the subscription key we inject. The 401 goes
    back as Vipps sent it; the token is kept, nothing is fetched or replayed."""
    assert await get_status(proxy) == 404
    await asyncio.sleep(MIN_AGE_TO_INVALIDATE)
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.at("/vipps-userinfo-api/userinfo/x")) as response,
    ):
        assert response.status == 401
        body = await response.json()
    assert "invalid subscription key" in body["message"]
    assert emulator.state.token_requests["accesstoken"] == 1
    assert proxy.logs.events("token_rejected_by_upstream") == []
    line = proxy.logs.events("request_completed")[-1]
    assert line["error"] == "upstream_rejected_subscription_key"
    assert await get_status(proxy) == 404  # the token still works


async def test_a_large_401_is_relayed_whole(
    emulator: RunningEmulator, start_proxy: ProxyFactory, aiohttp_raw_server: Any
) -> None:
    """A 401 body larger than what is read to classify it still reaches the client whole."""
    body = (
        b'{"message":"Access denied due to invalid subscription key","pad":"'
        + b"x" * 100_000
        + b'"}'
    )

    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response(status=401, body=body)

    upstream = await aiohttp_raw_server(handler)
    proxy = await start_proxy(make_config(emulator.token_url, upstream.make_url("")))
    async with aiohttp.ClientSession() as client, client.get(proxy.at("/a")) as response:
        assert (response.status, await response.read()) == (401, body)
    assert (
        proxy.logs.events("request_completed")[-1]["error"] == "upstream_rejected_subscription_key"
    )


async def test_a_failed_refresh_is_retried_by_halfway_to_the_held_tokens_expiry(
    start_emulator: EmulatorFactory, log_sink: LogSink
) -> None:
    """However long the backoff has grown, while a token is held the next attempt
    comes at most halfway to its expiry, so more attempts still fit before it runs
    out. (A clock the test moves; a backoff of 50 to 100 s.)"""
    emulator = await start_emulator(token_lifetime=60.0)
    creds = make_config(emulator.token_url, emulator.url).credentials["main"]
    now = [1000.0]
    async with aiohttp.ClientSession() as session:
        provider = TokenProvider(
            creds,
            session,
            Metrics(),
            Redactor(),
            backoff=Backoff(base=100.0, cap=100.0),
            clock=lambda: now[0],
        )
        await provider.get()
        emulator.state.faults.token = "error500"
        now[0] += 31.0  # past the refresh point, 24 s before the token expires
        provider.start()
        async with asyncio.timeout(10):
            while not log_sink.events("token_refresh_failed"):  # noqa: ASYNC110 (a log line)
                await asyncio.sleep(0.01)
        await provider.close()
    (failed,) = log_sink.events("token_refresh_failed")
    assert failed["holding_valid_token"]
    assert 1.0 <= failed["retry_in_s"] <= failed["token_valid_for_s"] / 2
