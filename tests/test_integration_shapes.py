"""Every Vipps integration shape in one config: two sales units, Checkout, Login, userinfo."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from proxy.config import parse_config
from proxy.emulator import DEMO_SALES_UNIT, DEMO_SALES_UNIT_2, SalesUnit
from tests.conftest import EmulatorFactory, ProxyFactory, RunningEmulator, RunningProxy

LOGIN_DISCOVERY = "/access-management-1.0/access/.well-known/openid-configuration"


def unit_config(unit: SalesUnit, token_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "token_url": token_url,
        "client_id": unit.client_id,
        "client_secret": unit.client_secret,
        "subscription_key": unit.subscription_key,
        "merchant_serial_number": unit.merchant_serial_number,
        **extra,
    }


@pytest.fixture
async def estate(emulator: RunningEmulator, start_proxy: ProxyFactory) -> RunningProxy:
    """The proxy with two sales units, a Checkout, a Login and a userinfo route."""
    up, token_url = str(emulator.url), str(emulator.token_url)
    doc = {
        "server": {"host": "127.0.0.1", "port": 0},
        "credentials": {
            "oslo": unit_config(DEMO_SALES_UNIT, token_url, system_name="legacy-erp"),
            "bergen": unit_config(DEMO_SALES_UNIT_2, token_url),
        },
        "routes": [
            {
                "prefix": "/",
                "upstream": up,
                "credentials": ["oslo", "bergen"],
                "default_credentials": "oslo",
            },
            {
                "prefix": "/checkout/",
                "upstream": up,
                "credentials": "bergen",
                "auth": "client-credentials",
            },
            {"prefix": "/access-management-1.0/", "upstream": up, "auth": "none"},
            {
                "prefix": "/vipps-userinfo-api/",
                "upstream": up,
                "credentials": "oslo",
                "auth": "bearer",
                "subscription_key": False,
            },
        ],
    }
    return await start_proxy(parse_config(doc, {}))


async def call(
    proxy: RunningProxy, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, proxy.at(path), **kwargs) as response,
    ):
        body = await response.json(content_type=None) if await response.read() else {}
        return response.status, body


def payment(reference: str) -> dict[str, Any]:
    return {
        "amount": {"currency": "NOK", "value": 1000},
        "paymentMethod": {"type": "WALLET"},
        "reference": reference,
        "userFlow": "WEB_REDIRECT",
        "returnUrl": "https://example.com/return",
    }


async def test_merchant_serial_number_picks_the_sales_unit(
    estate: RunningProxy, emulator: RunningEmulator
) -> None:
    """A payment created with MSN 654321 is made with the second unit's token and key."""
    status, _ = await call(
        estate,
        "POST",
        "/epayment/v1/payments",
        json=payment("bergen-order-1"),
        headers={"Merchant-Serial-Number": "654321", "Idempotency-Key": "k-bergen-1"},
    )
    assert status == 201
    (sent,) = [r for r in emulator.state.received if r.method == "POST"]
    assert sent.values("Ocp-Apim-Subscription-Key") == [DEMO_SALES_UNIT_2.subscription_key]
    token = sent.values("Authorization")[0].removeprefix("Bearer ")
    assert emulator.state.token_owner(token) == DEMO_SALES_UNIT_2


async def test_no_merchant_serial_number_uses_the_default_set(
    estate: RunningProxy, emulator: RunningEmulator
) -> None:
    """Without a Merchant-Serial-Number header the route's ``default_credentials`` is used."""
    status, _ = await call(estate, "GET", "/echo/first")
    assert status == 200
    (sent,) = list(emulator.state.received)
    assert sent.values("Merchant-Serial-Number") == [DEMO_SALES_UNIT.merchant_serial_number]


async def test_unknown_merchant_serial_number_is_refused(
    estate: RunningProxy, emulator: RunningEmulator
) -> None:
    """An MSN no set serves: 403 problem naming the number; nothing goes upstream."""
    status, body = await call(
        estate, "GET", "/echo/x", headers={"Merchant-Serial-Number": "999999"}
    )
    assert status == 403
    assert "999999" in body["detail"]
    assert not emulator.state.received


async def test_checkout_route_sends_client_credentials_not_a_token(
    estate: RunningProxy, emulator: RunningEmulator
) -> None:
    """Checkout v3: client_id/client_secret headers, key and MSN; no Authorization."""
    body = {
        "transaction": {
            "amount": {"currency": "NOK", "value": 100},
            "reference": "checkout-ref-1",
            "paymentDescription": "x",
        },
        "merchantInfo": {
            "callbackUrl": "https://example.com/cb",
            "returnUrl": "https://example.com/r",
        },
    }
    status, answer = await call(
        estate,
        "POST",
        "/checkout/v3/session",
        json=body,
        headers={"client_id": "dummy", "client_secret": "dummy"},
    )
    assert status == 201, answer
    (sent,) = list(emulator.state.received)
    assert sent.values("client_id") == [DEMO_SALES_UNIT_2.client_id]
    assert sent.values("Authorization") == []


async def test_login_passes_through_untouched(
    estate: RunningProxy, emulator: RunningEmulator
) -> None:
    """The Login route adds nothing and removes none of the client's credentials."""
    status, _ = await call(
        estate, "GET", LOGIN_DISCOVERY, headers={"Authorization": "Basic Y2xpZW50OnM="}
    )
    assert status == 200
    (sent,) = list(emulator.state.received)
    assert sent.values("Authorization") == ["Basic Y2xpZW50OnM="]
    assert sent.values("Ocp-Apim-Subscription-Key") == []


async def test_userinfo_never_gets_a_subscription_key(
    estate: RunningProxy, emulator: RunningEmulator
) -> None:
    """userinfo answers 401 to any subscription key; the route sends our token, no key."""
    status, _ = await call(estate, "GET", "/vipps-userinfo-api/userinfo/some-sub")
    assert status == 200
    assert emulator.state.received[-1].values("Ocp-Apim-Subscription-Key") == []


async def test_system_headers_are_defaults_only(
    estate: RunningProxy, emulator: RunningEmulator
) -> None:
    """Vipps-System-Name from config when the app sends none; the app's own wins."""
    await call(estate, "GET", "/echo/a")
    await call(estate, "GET", "/echo/b", headers={"Vipps-System-Name": "the-app"})
    first, second = emulator.state.received
    assert first.values("Vipps-System-Name") == ["legacy-erp"]
    assert second.values("Vipps-System-Name") == ["the-app"]


async def test_sdk_without_keys_is_served(estate: RunningProxy, emulator: RunningEmulator) -> None:
    """An SDK sending `Ocp-Apim-Subscription-Key: undefined` and a bare Bearer works."""
    headers = {"Ocp-Apim-Subscription-Key": "undefined", "Authorization": "Bearer"}
    status, _ = await call(estate, "GET", "/epayment/v1/payments/unknown-ref-1", headers=headers)
    assert status == 404  # authenticated: only the payment is unknown
    assert emulator.state.received[-1].values("Ocp-Apim-Subscription-Key") != ["undefined"]


async def test_token_subscription_key_is_used_for_the_token_call_only(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory
) -> None:
    """An old estate whose token call needs another key: each key goes where it belongs."""
    unit = SalesUnit(
        "old-id",
        "old-secret-value",
        "api-key-value",
        "111111",
        token_subscription_key="token-key-value",
    )
    emulator = await start_emulator(sales_units=(unit,))
    creds = unit_config(unit, str(emulator.token_url), token_subscription_key="token-key-value")
    doc = {"server": {"port": 0}, "credentials": {"old": creds}}
    proxy = await start_proxy(parse_config(doc, {}))
    status, _ = await call(proxy, "GET", "/epayment/v1/payments/unknown-ref-1")
    assert status == 404
    assert emulator.state.received[-1].values("Ocp-Apim-Subscription-Key") == ["api-key-value"]


async def test_legacy_token_answers_can_be_switched_off(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """local_token_endpoints = false forwards a legacy token call like any other."""
    creds = unit_config(DEMO_SALES_UNIT, str(emulator.token_url))
    doc = {
        "server": {"port": 0},
        "credentials": {"main": creds},
        "routes": [{"prefix": "/", "upstream": str(emulator.url), "local_token_endpoints": False}],
    }
    proxy = await start_proxy(parse_config(doc, {}))
    assert (await call(proxy, "GET", "/echo/warm"))[0] == 200  # our own token is held
    before = emulator.state.token_requests["accesstoken"]
    _, body = await call(proxy, "POST", "/accesstoken/get")
    assert emulator.state.token_requests["accesstoken"] == before + 1  # forwarded
    assert "access_token" not in body  # no placeholder: Vipps itself answered
