"""What the proxy answers itself: health, readiness, metrics, legacy token calls."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from tests.conftest import TOKEN_FIELDS, ProxyFactory, RunningEmulator, RunningProxy, make_config


async def get(url: str, method: str = "GET", **kwargs: object) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, url, **kwargs) as response,  # type: ignore[arg-type]
    ):
        return response.status, response.content_type, await response.read()


async def test_health_answers_200(proxy: RunningProxy, emulator: RunningEmulator) -> None:
    """/-/health is answered by the proxy and never forwarded."""
    status, _, _ = await get(proxy.at("/-/health"))
    assert status == 200
    assert not [r for r in emulator.state.received if r.raw_path.startswith("/-/")]


async def test_ready_follows_the_token(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """/-/ready is 503 while no token can be had and 200 once one is held."""
    emulator.state.faults.token = "error500"
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    await asyncio.sleep(0.2)
    assert (await get(proxy.at("/-/ready")))[0] == 503
    emulator.state.faults.clear()
    for _ in range(100):
        if (await get(proxy.at("/-/ready")))[0] == 200:
            break
        await asyncio.sleep(0.2)
    assert (await get(proxy.at("/-/ready")))[0] == 200


async def test_ready_with_only_a_client_credentials_route_is_200(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """A Checkout v3 route (``auth = "client-credentials"``) sends its set's id and
    secret, never a token: its set has no token to wait for, and /-/ready (a
    Kubernetes readiness probe) is 200, not a 500 from looking one up."""
    config = make_config(emulator.token_url, emulator.url, route={"auth": "client-credentials"})
    proxy = await start_proxy(config)
    status, _, body = await get(proxy.at("/-/ready"))
    assert (status, orjson.loads(body)) == (200, {"status": "ready"})


async def test_metrics_count_calls(proxy: RunningProxy) -> None:
    """/-/metrics is Prometheus text with calls counted by route, method and status."""
    await get(proxy.at("/echo/m"))
    status, ctype, body = await get(proxy.at("/-/metrics"))
    assert (status, ctype) == (200, "text/plain")
    text = body.decode()
    assert 'vipps_proxy_requests_total{method="GET",route="/",status="200"} 1.0' in text
    assert 'vipps_proxy_token_fetches_total{credentials="main",result="ok"} 1.0' in text


async def test_legacy_token_call_gets_a_placeholder(
    proxy: RunningProxy, emulator: RunningEmulator
) -> None:
    """POST /accesstoken/get is answered locally: seven string fields, no real token."""
    status, _, body = await get(proxy.at("/accessToken/get"), "POST")
    assert status == 200
    data = orjson.loads(body)
    assert set(data) == TOKEN_FIELDS
    assert all(isinstance(v, str) for v in data.values())
    assert data["access_token"] not in emulator.state.tokens
    assert emulator.state.token_requests["accesstoken"] <= 1  # only the proxy's own fetch


async def test_placeholder_token_calls_go_out_with_the_real_token(proxy: RunningProxy) -> None:
    """A legacy client's next call, carrying the placeholder, succeeds upstream."""
    _, _, body = await get(proxy.at("/api/access-token/jwt-token"), "POST")
    placeholder = orjson.loads(body)["access_token"]
    headers = {"Authorization": f"Bearer {placeholder}"}
    status, _, _ = await get(proxy.at("/epayment/v1/payments/abc12345"), headers=headers)
    assert status == 404  # authenticated: the payment just does not exist


async def test_legacy_token_call_is_answered_even_without_a_covering_route(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """POST /accesstoken/get is reserved: answered locally when no route covers it."""
    config = make_config(emulator.token_url, emulator.url, route={"prefix": "/epayment/"})
    proxy = await start_proxy(config)
    status, _, body = await get(proxy.at("/accesstoken/get"), "POST")
    assert status == 200
    assert orjson.loads(body)["access_token"].startswith("vipps-proxy-placeholder-")


async def test_the_placeholder_never_leaves_on_a_route_that_passes_the_clients_token(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """On an auth = "none" route the client's own Authorization goes upstream; the
    placeholder there is refused with a 400 problem that says so, and never sent."""
    routes = [
        {"prefix": "/vipps-userinfo-api/", "upstream": str(emulator.url), "auth": "none"},
        {"prefix": "/", "upstream": str(emulator.url)},
    ]
    proxy = await start_proxy(make_config(emulator.token_url, extra={"routes": routes}))
    _, _, body = await get(proxy.at("/accesstoken/get"), "POST")
    placeholder = orjson.loads(body)["access_token"]

    headers = {"Authorization": f"Bearer {placeholder}"}
    status, ctype, body = await get(proxy.at("/vipps-userinfo-api/userinfo/x"), headers=headers)
    own_status, _, _ = await get(
        proxy.at("/vipps-userinfo-api/userinfo/x"), headers={"Authorization": "Bearer users-own"}
    )

    assert (status, ctype) == (400, "application/problem+json")
    assert "passes the client's own token" in orjson.loads(body)["detail"]
    assert placeholder not in body.decode()
    sent = [v for r in emulator.state.received for v in r.values("Authorization")]
    assert sent == ["Bearer users-own"]  # the user's own token passes; ours never
    assert own_status == 401  # judged by the upstream itself: it never issued that token
