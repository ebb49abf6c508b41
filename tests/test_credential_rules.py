"""A route that names several credential sets picks one by the client's
Merchant-Serial-Number, matched exactly; a number no set serves is refused."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from proxy.config import ConfigError, Credentials, Route
from proxy.emulator import DEMO_SALES_UNITS, SalesUnit
from proxy.errors import ProxyError
from proxy.routing import pick_credentials
from proxy.secret import Secret
from tests.conftest import ProxyFactory, RunningEmulator, RunningProxy, make_config

OSLO, BERGEN = DEMO_SALES_UNITS


def creds(emulator: RunningEmulator, unit: SalesUnit) -> dict[str, str]:
    return {
        "token_url": str(emulator.token_url),
        "client_id": unit.client_id,
        "client_secret": unit.client_secret,
        "subscription_key": unit.subscription_key,
        "merchant_serial_number": unit.merchant_serial_number,
    }


@pytest.fixture
async def two_units(emulator: RunningEmulator, start_proxy: ProxyFactory) -> RunningProxy:
    """One route, both sales units on it."""
    config = make_config(
        emulator.token_url,
        extra={
            "credentials": {"oslo": creds(emulator, OSLO), "bergen": creds(emulator, BERGEN)},
            "routes": [
                {"prefix": "/", "upstream": str(emulator.url), "credentials": ["oslo", "bergen"]}
            ],
        },
    )
    return await start_proxy(config)


async def call(proxy: RunningProxy, msn: str) -> tuple[int, dict[str, Any]]:
    headers = {"Merchant-Serial-Number": msn}
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.at("/echo/msn"), headers=headers) as response,
    ):
        return response.status, orjson.loads(await response.read())


@pytest.mark.parametrize("unit", [OSLO, BERGEN], ids=["oslo", "bergen"])
async def test_each_merchant_serial_number_gets_its_own_credential_set(
    two_units: RunningProxy, emulator: RunningEmulator, unit: SalesUnit
) -> None:
    """Spaces around the number do not matter; the set's key and number are sent."""
    status, echoed = await call(two_units, f" {unit.merchant_serial_number} ")
    assert status == 200
    sent = emulator.state.received[-1]
    assert sent.values("Ocp-Apim-Subscription-Key") == [unit.subscription_key]
    assert sent.values("Merchant-Serial-Number") == [unit.merchant_serial_number]
    assert echoed["headers"]


@pytest.mark.parametrize("msn", ["200000", "12345", "1234567", "0", "999999"])
async def test_a_merchant_serial_number_no_set_serves_gets_403_and_nothing_is_sent(
    two_units: RunningProxy, emulator: RunningEmulator, msn: str
) -> None:
    """Only an exact match picks a set: a prefix, a longer number or one that merely
    sorts near a configured one is refused with reason ``unknown_msn``."""
    before = emulator.state.received_total
    status, problem = await call(two_units, msn)
    assert status == 403
    assert problem["status"] == 403
    assert emulator.state.received_total == before
    (line,) = two_units.logs.events("request_completed")
    assert line["error"] == "unknown_msn"


async def test_an_unknown_merchant_serial_number_is_shown_cut_to_twenty_characters(
    two_units: RunningProxy,
) -> None:
    """A client's long header is echoed in the problem only as its first 20 characters
    (a number is 6 or 7 digits: more is not a number, and the detail stays short)."""
    sent = "1234567890abcdefghijKLMNOP"
    status, problem = await call(two_units, sent)
    assert status == 403
    assert "'1234567890abcdefghij'" in problem["detail"]
    assert "K" not in problem["detail"].split("'")[1]


async def call_without_msn(proxy: RunningProxy, headers: dict[str, str]) -> aiohttp.ClientResponse:
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.at("/echo/msn"), headers=headers) as response,
    ):
        await response.read()
        return response


@pytest.mark.parametrize(
    "headers",
    [{}, {"Merchant-Serial-Number": ""}, {"Merchant-Serial-Number": "  "}],
    ids=["absent", "empty", "blank"],
)
async def test_a_call_without_merchant_serial_number_gets_400_missing_msn_and_nothing_is_sent(
    two_units: RunningProxy, emulator: RunningEmulator, headers: dict[str, str]
) -> None:
    """A route with several sales units never guesses one: no header (or a blank one)
    is a 400 problem with reason ``missing_msn``, and nothing goes to Vipps."""
    response = await call_without_msn(two_units, headers)
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    assert emulator.state.received_total == 0
    (line,) = two_units.logs.events("request_completed")
    assert line["error"] == "missing_msn"


async def test_default_credentials_serves_a_call_without_merchant_serial_number(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """``default_credentials`` names the set a call without the header gets."""
    route = {"prefix": "/", "upstream": str(emulator.url), "credentials": ["oslo", "bergen"]}
    config = make_config(
        emulator.token_url,
        extra={
            "credentials": {"oslo": creds(emulator, OSLO), "bergen": creds(emulator, BERGEN)},
            "routes": [{**route, "default_credentials": "bergen"}],
        },
    )
    proxy = await start_proxy(config)
    response = await call_without_msn(proxy, {})
    assert response.status == 200
    sent = emulator.state.received[-1]
    assert sent.values("Merchant-Serial-Number") == [BERGEN.merchant_serial_number]
    assert sent.values("Ocp-Apim-Subscription-Key") == [BERGEN.subscription_key]


@pytest.mark.parametrize("name", ["nowhere", "other"])
def test_default_credentials_not_among_the_routes_sets_is_a_config_error(
    emulator: RunningEmulator, name: str
) -> None:
    """A name the route does not list (unknown, or a set of another route) is refused,
    naming the key."""
    other = {**creds(emulator, OSLO), "merchant_serial_number": "777777"}
    route = {"prefix": "/", "upstream": str(emulator.url), "credentials": ["oslo", "bergen"]}
    with pytest.raises(ConfigError) as caught:
        make_config(
            emulator.token_url,
            extra={
                "credentials": {
                    "oslo": creds(emulator, OSLO),
                    "bergen": creds(emulator, BERGEN),
                    "other": other,
                },
                "routes": [{**route, "default_credentials": name}],
            },
        )
    assert str(caught.value).startswith("routes[0].default_credentials: ")
    assert repr(name) in str(caught.value)


HEADER_VALUES = st.text(alphabet=st.sampled_from(" \t0123456789ab"), max_size=10)


@settings(max_examples=300, deadline=None)
@given(msn=st.one_of(st.none(), HEADER_VALUES), default=st.sampled_from(["", "oslo", "bergen"]))
def test_a_set_is_picked_only_by_an_exact_number_or_a_named_default(
    msn: str | None, default: str
) -> None:
    """Whatever the header holds: a blank or missing one gets the named default or 400
    ``missing_msn``; any other value gets the set with exactly that number or 403. The
    first set is never a fallback."""
    sets = {
        name: Credentials(
            name,
            URL("https://apitest.vipps.no/accesstoken/get"),
            "accesstoken",
            Secret("id"),
            Secret("secret"),
            Secret("key"),
            merchant_serial_number=unit.merchant_serial_number,
        )
        for name, unit in (("oslo", OSLO), ("bergen", BERGEN))
    }
    route = Route(
        "/", URL("https://apitest.vipps.no"), ("oslo", "bergen"), default_credentials=default
    )
    wanted = (msn or "").strip()
    numbers = {c.merchant_serial_number: name for name, c in sets.items()}
    expected = numbers.get(wanted) if wanted else default
    if expected:
        picked = pick_credentials(route, sets, msn)
        assert picked is not None
        assert picked.name == expected
        return
    with pytest.raises(ProxyError) as caught:
        pick_credentials(route, sets, msn)
    assert caught.value.reason == ("unknown_msn" if wanted else "missing_msn")
