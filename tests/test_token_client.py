"""The token request itself: what each style sends, the codings it asks for, and a
token endpoint's ``Retry-After`` honoured.

Token endpoints and upstreams here are real aiohttp servers on loopback that record
what reached them; the proxy in front of them is the real one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from proxy.config import Config, ConfigError, parse_config
from proxy.metrics import Metrics
from proxy.redact import Redactor
from proxy.tokenfetch import retry_after_seconds
from proxy.tokens import NO_TOKEN_RETRY_CAP, Backoff, TokenProvider
from tests.conftest import LogSink, ProxyFactory, RunningProxy, make_config
from tests.webhook_peers import eventually

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.token-client.c2lnbmF0dXJl"
ANSWER = {
    "token_type": "Bearer",
    "expires_in": "3600",
    "ext_expires_in": "0",
    "access_token": TOKEN,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Recorder:
    """A loopback server that keeps the headers of every request it answers."""

    answer: Handler
    heads: list[dict[str, str]] = field(default_factory=list)
    url: URL = field(default_factory=URL)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.heads.append(dict(request.headers))
        return await self.answer(request)


Start = Callable[[Handler], Awaitable[Recorder]]


@pytest.fixture
def serve(aiohttp_server: Any) -> Start:
    async def factory(answer: Handler) -> Recorder:
        recorder = Recorder(answer)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", recorder.handle)
        server = await aiohttp_server(app, host="127.0.0.1")
        recorder.url = server.make_url("")
        return recorder

    return factory


async def token_answer(request: web.Request) -> web.StreamResponse:
    return web.json_response(ANSWER)


async def compressed_token_answer(request: web.Request) -> web.StreamResponse:
    """As a gateway in front of the token endpoint may: gzip when the request allows."""
    response = web.json_response({**ANSWER, "padding": "x" * 4096})
    response.enable_compression()
    return response


async def ok(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


async def call(proxy: RunningProxy, path: str = "/x") -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as client, client.get(proxy.at(path)) as response:
        await response.read()
        return response.status, dict(response.headers)


# ------------------------------------------------------------------ codings


async def test_the_token_request_asks_for_the_identity_coding_only(
    serve: Start, start_proxy: ProxyFactory
) -> None:
    """The token session does not decode, so it advertises no coding (RFC 9110 §12.5.3)."""
    endpoint, upstream = await serve(token_answer), await serve(ok)
    proxy = await start_proxy(make_config(endpoint.url / "accesstoken/get", upstream.url))

    assert (await call(proxy))[0] == 200

    assert endpoint.heads[0]["Accept-Encoding"] == "identity"


async def test_a_compressing_token_endpoint_still_gives_a_working_token(
    serve: Start, start_proxy: ProxyFactory
) -> None:
    """An endpoint (or gateway) that compresses what the request allows: the answer
    comes plain, the token is read and injected."""
    endpoint, upstream = await serve(compressed_token_answer), await serve(ok)
    proxy = await start_proxy(make_config(endpoint.url / "accesstoken/get", upstream.url))

    assert (await call(proxy))[0] == 200

    assert upstream.heads[0]["Authorization"] == f"Bearer {TOKEN}"
    assert proxy.logs.events("token_refresh_failed") == []


# ------------------------------------------------------------------ Retry-After


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    """RFC 9110 §10.2.3: delay-seconds or an HTTP date; anything else is not a wish."""
    now = 1_700_000_000.0
    assert retry_after_seconds("30", now) == 30.0
    assert retry_after_seconds(" 7 ", now) == 7.0
    assert retry_after_seconds(formatdate(now + 45, usegmt=True), now) == 45.0
    assert retry_after_seconds(formatdate(now - 45, usegmt=True), now) == 0.0
    for junk in (None, "", "soon", "-5", "1.5", "३०", "Thu, 99 Foo 2023 99:99:99 GMT"):
        assert retry_after_seconds(junk, now) is None


@pytest.mark.parametrize("zone", ["+0200", "-0000"])
def test_a_retry_after_date_is_read_as_the_instant_it_names_in_any_zone(zone: str) -> None:
    """Not GMT as RFC 9110 asks, but a date all the same: ``+0200`` is two hours ahead
    of GMT, and ``-0000`` (no zone known) is taken as GMT, whatever the local zone."""
    now = 1_700_000_000.0
    offset = {"+0200": 7200, "-0000": 0}[zone]
    written = formatdate(now + 45 + offset, usegmt=True).replace("GMT", zone)
    assert retry_after_seconds(written, now) == 45.0


def retry_after_answer(status: int, value: Callable[[], str]) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="slow down", headers={"Retry-After": value()})

    return answer


@pytest.mark.parametrize(
    ("status", "value"),
    [
        (429, lambda: "30"),
        (503, lambda: "30"),
        (429, lambda: formatdate(time.time() + 30, usegmt=True)),
    ],
    ids=["429-seconds", "503-seconds", "429-http-date"],
)
async def test_a_token_endpoint_retry_after_holds_the_next_fetch(
    serve: Start, start_proxy: ProxyFactory, status: int, value: Callable[[], str]
) -> None:
    """429/503 with Retry-After: 30: no second fetch meanwhile, and each call gets a
    503 whose Retry-After says when the next try is (not the 5 s of plain backoff)."""
    endpoint, upstream = await serve(retry_after_answer(status, value)), await serve(ok)
    proxy = await start_proxy(make_config(endpoint.url / "accesstoken/get", upstream.url))

    answers = [await call(proxy) for _ in range(5)]

    assert {status for status, _ in answers} == {503}
    assert all(NO_TOKEN_RETRY_CAP < int(h["Retry-After"]) <= 30 for _, h in answers)
    assert len(endpoint.heads) == 1
    (failed,) = proxy.logs.events("token_refresh_failed")
    assert 29 <= failed["retry_in_s"] <= 30


async def test_a_token_endpoint_retry_after_is_capped_at_300_s(
    serve: Start, start_proxy: ProxyFactory
) -> None:
    """A day's Retry-After holds fetches for 300 s at most."""
    endpoint = await serve(retry_after_answer(429, lambda: "86400"))
    upstream = await serve(ok)
    proxy = await start_proxy(make_config(endpoint.url / "accesstoken/get", upstream.url))

    status, headers = await call(proxy)

    assert status == 503
    assert 290 <= int(headers["Retry-After"]) <= 300
    (failed,) = proxy.logs.events("token_refresh_failed")
    assert failed["retry_in_s"] == 300


async def refresh_failure(
    serve: Start, log_sink: LogSink, refused: Handler, advance: float, backoff: Backoff
) -> dict[str, Any]:
    """The ``token_refresh_failed`` line of a refresh answered by ``refused``, ``advance``
    seconds after a first token (3600 s) was fetched. (A clock the test moves.)"""
    answers = [token_answer, refused]

    async def answer(request: web.Request) -> web.StreamResponse:
        return await answers.pop(0)(request) if len(answers) > 1 else await answers[0](request)

    endpoint = await serve(answer)
    creds = make_config(endpoint.url / "accesstoken/get").credentials["main"]
    now = [1000.0]
    async with aiohttp.ClientSession() as session:
        provider = TokenProvider(
            creds, session, Metrics(), Redactor(), backoff=backoff, clock=lambda: now[0]
        )
        await provider.get()
        now[0] += advance
        provider.start()
        await eventually(lambda: bool(log_sink.events("token_refresh_failed")), "a refresh")
        await provider.close()
    (failed,) = log_sink.events("token_refresh_failed")
    assert failed["holding_valid_token"]
    return failed


async def test_a_retry_after_never_outlasts_half_the_held_tokens_life(
    serve: Start, log_sink: LogSink
) -> None:
    """A refresh answered 429 Retry-After: 300 while the held token has 24 s left: the
    next attempt comes within 12 s."""
    refused = retry_after_answer(429, lambda: "300")
    failed = await refresh_failure(serve, log_sink, refused, 3600 - 5 - 24, Backoff())
    assert failed["retry_in_s"] == 12


@pytest.mark.parametrize(
    "value",
    ["0", formatdate(time.time() - 3600, usegmt=True)],
    ids=["zero", "http-date-in-the-past"],
)
async def test_a_retry_after_shorter_than_the_backoff_never_shortens_it(
    serve: Start, log_sink: LogSink, value: str
) -> None:
    """A refresh answered 503 ``Retry-After: 0`` (or a date gone by) at the refresh
    time (355 s left): the endpoint may be asked again no sooner than it says, but the
    backoff still holds; a struggling endpoint is not asked every second."""
    refused = retry_after_answer(503, lambda: value)
    failed = await refresh_failure(serve, log_sink, refused, 3240, Backoff(20, 30))
    assert 10 <= failed["retry_in_s"] <= 20  # the first backoff step, not 1 s


# ------------------------------------------------------------------ token styles


def oauth2_config(token_url: URL, upstream: URL, **credentials: str) -> Config:
    """One oauth2 set with only what it needs, plus ``credentials``; one route ``/``."""
    creds = {"token_url": str(token_url), "token_style": "oauth2", "client_id": "id-1"}
    doc = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_timeout": 2},
        "credentials": {"main": {**creds, "client_secret": "s-1", **credentials}},
        "routes": [{"prefix": "/", "upstream": str(upstream)}],
    }
    return parse_config(doc, {})


async def test_the_oauth2_token_request_sends_no_subscription_key(
    serve: Start, start_proxy: ProxyFactory
) -> None:
    """/miami/v1/token: "The Ocp-Apim-Subscription-Key is not used" (and sending it gets
    invalid_client): HTTP Basic and the form only, even with a key configured."""
    endpoint, upstream = await serve(token_answer), await serve(ok)
    config = oauth2_config(endpoint.url / "miami/v1/token", upstream.url, subscription_key="k-1")
    proxy = await start_proxy(config)

    assert (await call(proxy))[0] == 200

    assert endpoint.heads  # one fetch, or more if a busy machine made one fail
    for head in endpoint.heads:
        assert "Ocp-Apim-Subscription-Key" not in head
        assert head["Authorization"].startswith("Basic ")
        assert head["Content-Type"] == "application/x-www-form-urlencoded"


def test_an_oauth2_set_needs_no_subscription_key_but_others_do() -> None:
    """subscription_key is optional for oauth2 sets only; elsewhere the error names it."""
    url = URL("http://127.0.0.1:1/miami/v1/token")
    assert oauth2_config(url, url).credentials["main"].subscription_key is None
    with pytest.raises(ConfigError, match=r"credentials\.main\.subscription_key"):
        oauth2_config(url, url, token_style="accesstoken")


async def test_oauth2_routes_send_neither_key_nor_msn_by_default(
    serve: Start, start_proxy: ProxyFactory
) -> None:
    """Tokens from /miami/v1/token need "no subscription key": an oauth2 set with none
    configured sends the token only."""
    endpoint, upstream = await serve(token_answer), await serve(ok)
    proxy = await start_proxy(oauth2_config(endpoint.url / "miami/v1/token", upstream.url))

    assert (await call(proxy))[0] == 200

    (head,) = upstream.heads
    assert head["Authorization"] == f"Bearer {TOKEN}"
    assert "Ocp-Apim-Subscription-Key" not in head
    assert "Merchant-Serial-Number" not in head


async def test_oauth2_routes_send_the_key_and_msn_the_set_configures(
    serve: Start, start_proxy: ProxyFactory
) -> None:
    """An oauth2 set that configures a subscription_key and merchant_serial_number
    (an API that wants them) has its routes send both."""
    endpoint, upstream = await serve(token_answer), await serve(ok)
    config = oauth2_config(
        endpoint.url / "miami/v1/token",
        upstream.url,
        subscription_key="k-1",
        merchant_serial_number="123456",
    )
    proxy = await start_proxy(config)

    assert (await call(proxy))[0] == 200

    (head,) = upstream.heads
    assert (head["Ocp-Apim-Subscription-Key"], head["Merchant-Serial-Number"]) == ("k-1", "123456")


async def test_the_accesstoken_request_carries_the_msn_and_system_headers(
    serve: Start, start_proxy: ProxyFactory
) -> None:
    """As the Access Token guide's sample request: Merchant-Serial-Number and the four
    configured Vipps-System-* headers go with POST /accesstoken/get."""
    endpoint, upstream = await serve(token_answer), await serve(ok)
    system = {
        "system_name": "acme",
        "system_version": "3.1.2",
        "plugin_name": "acme-webshop",
        "plugin_version": "4.5.6",
    }
    config = make_config(endpoint.url / "accesstoken/get", upstream.url, credentials=system)
    proxy = await start_proxy(config)

    assert (await call(proxy))[0] == 200

    head = endpoint.heads[-1]  # the fetch whose token the call used
    assert head["Merchant-Serial-Number"] == config.credentials["main"].merchant_serial_number
    assert [head.get(f"Vipps-System-{n}") for n in ("Name", "Version")] == ["acme", "3.1.2"]
    assert [head.get(f"Vipps-System-Plugin-{n}") for n in ("Name", "Version")] == [
        "acme-webshop",
        "4.5.6",
    ]
