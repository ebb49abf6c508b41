"""The token fetch never follows a redirect: a 3xx from the token endpoint is a failed
fetch, and the client secret and subscription key never reach where it points.

Two real servers: the token endpoint answers every fetch with a redirect; the redirect
target would hand out a token, and records whether anyone called it.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import (
    DEMO_CLIENT_SECRET,
    DEMO_SUBSCRIPTION_KEY,
    ProxyFactory,
    RunningEmulator,
    make_config,
)

PAYMENT = "/epayment/v1/payments/no-such-payment-1"  # needs a token


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_from_the_token_endpoint_is_a_failed_fetch(
    status: int, emulator: RunningEmulator, start_proxy: ProxyFactory, aiohttp_server: Any
) -> None:
    target_calls: list[dict[str, str]] = []

    async def target(request: web.Request) -> web.Response:
        target_calls.append({**request.headers, "body": (await request.read()).decode()})
        return web.json_response(
            {"token_type": "Bearer", "expires_in": "3600", "access_token": "stolen-token"}
        )

    target_app = web.Application()
    target_app.router.add_route("*", "/{tail:.*}", target)
    target_server = await aiohttp_server(target_app, host="127.0.0.1")

    async def redirecting(request: web.Request) -> web.Response:
        await request.read()
        location = str(target_server.make_url("/accesstoken/get"))
        return web.Response(status=status, headers={"Location": location})

    redirect_app = web.Application()
    redirect_app.router.add_route("*", "/{tail:.*}", redirecting)
    redirect_server = await aiohttp_server(redirect_app, host="127.0.0.1")

    proxy = await start_proxy(
        make_config(redirect_server.make_url("/accesstoken/get"), emulator.url)
    )
    async with aiohttp.ClientSession() as client, client.get(proxy.at(PAYMENT)) as response:
        await response.read()
        assert response.status == 503
        assert response.content_type == "application/problem+json"
    assert target_calls == []
    (line,) = proxy.logs.events("request_completed")
    assert line["token"] == "none"
    assert f"token endpoint answered {status}" in proxy.logs.text()
    assert DEMO_CLIENT_SECRET not in proxy.logs.text()
    assert DEMO_SUBSCRIPTION_KEY not in proxy.logs.text()
