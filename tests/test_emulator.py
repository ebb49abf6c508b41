"""The Vipps emulator: token endpoints, APIs, diagnostics, faults and the admin app.

Every test runs a real emulator on loopback and speaks HTTP to it.
"""

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient

from proxy.emulator import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_MERCHANT_SERIAL_NUMBER,
    DEMO_SALES_UNIT,
    DEMO_SALES_UNIT_2,
    DEMO_SUBSCRIPTION_KEY,
    EmulatorSettings,
    Faults,
    SalesUnit,
    create_admin_app,
    create_emulator,
    emulator_state,
    serve_emulator,
)
from tests.conftest import TOKEN_FIELDS

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

NUMERIC_FIELDS = ("expires_in", "ext_expires_in", "expires_on", "not_before")
INVALID_KEY = (
    "Access denied due to invalid subscription key. "
    "Make sure to provide a valid key for an active subscription."
)
MISSING_KEY = (
    "Access denied due to missing subscription key. "
    "Make sure to include subscription key when making requests to an API."
)
INVALID_TOKEN = "Access denied due to invalid token"
MISSING_TOKEN = "Access denied due to missing token"
EXPIRED_TOKEN = "Access denied due to expired token"
OLD_ESTATE = SalesUnit(
    client_id="old-client-id",
    client_secret="old-client-secret",
    subscription_key="old-api-key",
    merchant_serial_number="777777",
    token_subscription_key="old-token-key",
)


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient) -> MakeClient:
    """A factory: an emulator with the given settings, served on loopback, and a client."""

    async def make(**settings: Any) -> Client:
        return await aiohttp_client(create_emulator(EmulatorSettings(**settings)))

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    """A client for an emulator with the default settings."""
    return await make_client()


def token_headers(unit: SalesUnit = DEMO_SALES_UNIT) -> dict[str, str]:
    """The headers of an /accesstoken/get call for ``unit``."""
    return {
        "client_id": unit.client_id,
        "client_secret": unit.client_secret,
        "Ocp-Apim-Subscription-Key": unit.token_key,
    }


async def fetch_token(client: Client, unit: SalesUnit = DEMO_SALES_UNIT) -> str:
    """A fresh token for ``unit``."""
    response = await client.post("/accesstoken/get", headers=token_headers(unit))
    assert response.status == 200
    token: str = (await response.json())["access_token"]
    return token


def api_headers(token: str, unit: SalesUnit = DEMO_SALES_UNIT, **extra: str) -> dict[str, str]:
    """The headers of an API call with ``token`` for ``unit``."""
    return {
        "Authorization": f"Bearer {token}",
        "Ocp-Apim-Subscription-Key": unit.subscription_key,
        "Merchant-Serial-Number": unit.merchant_serial_number,
        **extra,
    }


async def authed(client: Client, unit: SalesUnit = DEMO_SALES_UNIT, **extra: str) -> dict[str, str]:
    """API headers with a freshly fetched token."""
    return api_headers(await fetch_token(client, unit), unit, **extra)


def payment_body(reference: str = "order-123456", value: int = 10_000) -> dict[str, object]:
    """A valid CreatePaymentRequest."""
    return {
        "amount": {"currency": "NOK", "value": value},
        "paymentMethod": {"type": "WALLET"},
        "reference": reference,
        "userFlow": "WEB_REDIRECT",
        "returnUrl": "https://example.com/return",
    }


def nok(value: int) -> dict[str, object]:
    """An Amount in NOK."""
    return {"currency": "NOK", "value": value}


async def create_payment(
    client: Client, headers: dict[str, str], reference: str = "order-123456", key: str = "key-1"
) -> aiohttp.ClientResponse:
    """POST a valid payment with ``Idempotency-Key: key``."""
    return await client.post(
        "/epayment/v1/payments",
        json=payment_body(reference),
        headers={**headers, "Idempotency-Key": key},
    )


async def approved_payment(client: Client, headers: dict[str, str]) -> aiohttp.ClientResponse:
    """Create the default payment and approve it as the user would, through the test call."""
    created = await create_payment(client, headers)
    approve = "/epayment/v1/test/payments/order-123456/approve"
    approved = await client.post(approve, headers=headers, json={})
    assert approved.status == 200
    return created


async def adjust(
    client: Client, headers: dict[str, str], action: str, value: int | None, key: str
) -> aiohttp.ClientResponse:
    """POST a capture, refund or cancel of the default payment."""
    body = None if value is None else {"modificationAmount": nok(value)}
    return await client.post(
        f"/epayment/v1/payments/order-123456/{action}",
        json=body,
        headers={**headers, "Idempotency-Key": key},
    )


# --- token endpoints ---------------------------------------------------------------


async def test_accesstoken_answers_seven_string_fields(client: Client) -> None:
    """POST /accesstoken/get answers the seven fields, every one a string."""
    response = await client.post("/accesstoken/get", headers=token_headers())
    body = await response.json()
    assert response.status == 200
    assert set(body) == TOKEN_FIELDS
    assert all(isinstance(value, str) for value in body.values())
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == "3600"
    assert int(body["expires_on"]) - int(body["not_before"]) == 3600


@pytest.mark.parametrize("path", ["/accessToken/get", "/ACCESSTOKEN/GET", "/AccessToken/Get"])
async def test_accesstoken_path_is_served_in_any_case(client: Client, path: str) -> None:
    """Vipps' gateway serves the token path in any case; so does the emulator."""
    response = await client.post(path, headers=token_headers())
    assert response.status == 200
    assert set(await response.json()) == TOKEN_FIELDS
    assert list(emulator_state(client.app).received) == []  # a token call, not an API call


async def test_jwt_token_path_is_served_in_any_case(client: Client) -> None:
    """The jwt-token path in another case answers the same."""
    response = await client.post(
        "/API/Access-Token/JWT-Token",
        headers={"Ocp-Apim-Subscription-Key": DEMO_SUBSCRIPTION_KEY},
        json={
            "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET,
            "resource": "https://api.vipps.no",
        },
    )
    assert response.status == 200
    assert set(await response.json()) == TOKEN_FIELDS


async def test_expires_in_as_number_sends_numbers(make_client: MakeClient) -> None:
    """With expires_in_as_number the four time fields are JSON numbers."""
    client = await make_client(expires_in_as_number=True)
    body = await (await client.post("/accesstoken/get", headers=token_headers())).json()
    assert all(isinstance(body[name], int) for name in NUMERIC_FIELDS)
    assert isinstance(body["access_token"], str)


async def test_jwt_token_takes_credentials_in_json(client: Client) -> None:
    """POST /api/access-token/jwt-token with a JSON body answers the seven fields."""
    response = await client.post(
        "/api/access-token/jwt-token",
        headers={"Ocp-Apim-Subscription-Key": DEMO_SUBSCRIPTION_KEY},
        json={
            "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET,
            "resource": "https://api.vipps.no",
        },
    )
    body = await response.json()
    assert response.status == 200
    assert set(body) == TOKEN_FIELDS
    assert body["resource"] == "https://api.vipps.no"


async def test_jwt_token_rejects_bad_json(client: Client) -> None:
    """A jwt-token request whose body is not JSON gets 400."""
    response = await client.post(
        "/api/access-token/jwt-token",
        headers={"Ocp-Apim-Subscription-Key": DEMO_SUBSCRIPTION_KEY},
        data=b"{not json",
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_request"


async def test_jwt_token_rejects_another_resource(client: Client) -> None:
    """A jwt-token request naming another resource gets 400 invalid_resource."""
    response = await client.post(
        "/api/access-token/jwt-token",
        headers={"Ocp-Apim-Subscription-Key": DEMO_SUBSCRIPTION_KEY},
        json={
            "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET,
            "resource": "https://elsewhere.example",
        },
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_resource"


async def test_oauth2_token_uses_basic_auth(client: Client) -> None:
    """POST /miami/v1/token with Basic credentials answers expires_in as a number."""
    response = await client.post(
        "/miami/v1/token",
        headers={"Authorization": aiohttp.encode_basic_auth(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)},
        data={"grant_type": "client_credentials"},
    )
    body = await response.json()
    assert response.status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["access_token"]
    assert "scope" in body


async def test_oauth2_token_rejects_bad_client(client: Client) -> None:
    """Wrong Basic credentials get 401 invalid_client."""
    response = await client.post(
        "/miami/v1/token",
        headers={"Authorization": aiohttp.encode_basic_auth(DEMO_CLIENT_ID, "wrong")},
        data={"grant_type": "client_credentials"},
    )
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_client"


async def test_oauth2_token_rejects_other_grants(client: Client) -> None:
    """A grant other than client_credentials gets 400 unsupported_grant_type."""
    response = await client.post(
        "/miami/v1/token",
        headers={"Authorization": aiohttp.encode_basic_auth(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)},
        data={"grant_type": "password"},
    )
    assert response.status == 400
    assert (await response.json())["error"] == "unsupported_grant_type"


async def test_wrong_subscription_key_gets_apim_401(client: Client) -> None:
    """A token call with an unknown subscription key gets the gateway's 401 body."""
    headers = {**token_headers(), "Ocp-Apim-Subscription-Key": "wrong"}
    response = await client.post("/accesstoken/get", headers=headers)
    assert response.status == 401
    assert await response.json() == {"statusCode": 401, "message": INVALID_KEY}


async def test_wrong_secret_gets_azure_401_without_credentials(client: Client) -> None:
    """A wrong client secret gets Azure AD's 401 body, which names no credential."""
    headers = {**token_headers(), "client_secret": "a-wrong-secret"}
    response = await client.post("/accesstoken/get", headers=headers)
    text = await response.text()
    body = await response.json()
    assert response.status == 401
    assert body["error"] == "unauthorized_client"
    assert body["error_codes"] == [700016]
    assert {"timestamp", "trace_id", "correlation_id", "error_description"} <= set(body)
    for secret in ("a-wrong-secret", DEMO_CLIENT_SECRET, DEMO_CLIENT_ID, DEMO_SUBSCRIPTION_KEY):
        assert secret not in text


async def test_old_estate_token_key_differs_from_api_key(make_client: MakeClient) -> None:
    """A unit with a token_subscription_key gets tokens with it and calls APIs with the other."""
    client = await make_client(sales_units=(OLD_ESTATE,))
    with_api_key = {**token_headers(OLD_ESTATE), "Ocp-Apim-Subscription-Key": "old-api-key"}
    refused = await client.post("/accesstoken/get", headers=with_api_key)
    token = await fetch_token(client, OLD_ESTATE)
    answered = await client.get(
        "/epayment/v1/payments/order-000000", headers=api_headers(token, OLD_ESTATE)
    )
    assert refused.status == 401
    assert answered.status == 404  # authenticated; there is just no such payment


async def test_token_requests_are_counted_per_style(client: Client) -> None:
    """Each token endpoint style counts its own requests, failed ones included."""
    await fetch_token(client)
    await client.post("/accesstoken/get", headers={})
    await client.post("/miami/v1/token", data={"grant_type": "client_credentials"})
    counts = emulator_state(client.app).token_requests
    assert counts == {"accesstoken": 2, "jwt-token": 0, "oauth2": 1}


async def test_token_calls_are_not_recorded_as_api_requests(client: Client) -> None:
    """Token calls stay out of the received API requests."""
    await fetch_token(client)
    assert list(emulator_state(client.app).received) == []


async def test_tokens_are_opaque_and_distinct(client: Client) -> None:
    """Every token call hands out a new, long, random token."""
    first, second = await fetch_token(client), await fetch_token(client)
    assert first != second
    assert len(first) > 40


# --- API authentication ------------------------------------------------------------


async def test_token_really_expires(make_client: MakeClient) -> None:
    """A token stops working once its lifetime has passed."""
    client = await make_client(token_lifetime=0.2)
    headers = await authed(client)
    before = await client.get("/epayment/v1/payments/order-000000", headers=headers)
    await asyncio.sleep(0.25)
    after = await client.get("/epayment/v1/payments/order-000000", headers=headers)
    assert before.status == 404
    assert after.status == 401
    assert await after.json() == {"statusCode": 401, "message": EXPIRED_TOKEN}


async def test_api_without_token_gets_401(client: Client) -> None:
    """An API call without a bearer token gets the gateway's token 401."""
    headers = {"Ocp-Apim-Subscription-Key": DEMO_SUBSCRIPTION_KEY}
    response = await client.get("/epayment/v1/payments/order-000000", headers=headers)
    assert response.status == 401
    assert (await response.json())["message"] == MISSING_TOKEN


async def test_api_with_an_unknown_token_gets_401(client: Client) -> None:
    """A token the gateway never issued gets the invalid-token 401, as Vipps words it."""
    headers = api_headers("eyJ-never-issued-by-this-emulator")
    response = await client.get("/epayment/v1/payments/order-000000", headers=headers)
    assert response.status == 401
    assert await response.json() == {"statusCode": 401, "message": INVALID_TOKEN}


async def test_api_without_a_subscription_key_gets_401(client: Client) -> None:
    """No subscription key at all gets the gateway's missing-key 401."""
    headers = api_headers(await fetch_token(client))
    del headers["Ocp-Apim-Subscription-Key"]
    response = await client.get("/epayment/v1/payments/order-000000", headers=headers)
    assert response.status == 401
    assert await response.json() == {"statusCode": 401, "message": MISSING_KEY}


async def test_api_with_unknown_key_gets_401(client: Client) -> None:
    """An API call with an unknown subscription key gets the subscription-key 401."""
    headers = api_headers(await fetch_token(client))
    headers["Ocp-Apim-Subscription-Key"] = "wrong"
    response = await client.get("/epayment/v1/payments/order-000000", headers=headers)
    assert response.status == 401
    assert (await response.json())["message"] == INVALID_KEY


async def test_token_of_another_unit_is_refused(client: Client) -> None:
    """A token works only with the subscription key of the unit it was issued to."""
    token = await fetch_token(client, DEMO_SALES_UNIT)
    headers = api_headers(token, DEMO_SALES_UNIT_2)
    response = await client.get("/epayment/v1/payments/order-000000", headers=headers)
    assert response.status == 401
    assert (await response.json())["message"] == INVALID_TOKEN


async def test_foreign_merchant_serial_number_gets_403(client: Client) -> None:
    """A Merchant-Serial-Number other than the unit's gets a 403 problem."""
    headers = await authed(client)
    headers["Merchant-Serial-Number"] = DEMO_SALES_UNIT_2.merchant_serial_number
    response = await client.get("/epayment/v1/payments/order-000000", headers=headers)
    assert response.status == 403
    assert response.content_type == "application/problem+json"


async def test_unknown_path_is_a_problem_after_authentication(client: Client) -> None:
    """An unknown path gets 401 without credentials and a 404 problem with them."""
    anonymous = await client.get("/recurring/v3/agreements")
    known = await client.get("/recurring/v3/agreements", headers=await authed(client))
    body = await known.json()
    assert anonymous.status == 401
    assert known.status == 404
    assert known.content_type == "application/problem+json"
    assert {"type", "title", "status", "detail", "instance", "traceId"} <= set(body)


# --- ePayment ----------------------------------------------------------------------


async def test_payment_flow_create_get_capture_refund(client: Client) -> None:
    """A payment is created, read, captured and refunded, its aggregate following."""
    headers = await authed(client)
    created = await approved_payment(client, headers)
    fetched = await client.get("/epayment/v1/payments/order-123456", headers=headers)
    captured = await adjust(client, headers, "capture", 10_000, "capture-1")
    refunded = await adjust(client, headers, "refund", 4_000, "refund-1")
    assert created.status == 201
    assert (await created.json())["reference"] == "order-123456"
    assert (await fetched.json())["state"] == "AUTHORIZED"
    assert captured.status == 200
    assert refunded.status == 200
    aggregate = (await refunded.json())["aggregate"]
    assert aggregate["capturedAmount"] == nok(10_000)
    assert aggregate["refundedAmount"] == nok(4_000)


async def test_get_payment_has_the_spec_fields(client: Client) -> None:
    """GET payment answers every required GetPaymentResponse field."""
    headers = await authed(client)
    await create_payment(client, headers)
    body = await (await client.get("/epayment/v1/payments/order-123456", headers=headers)).json()
    required = {"aggregate", "amount", "state", "paymentMethod", "profile", "pspReference"}
    assert required | {"reference", "redirectUrl"} <= set(body)
    assert body["amount"] == nok(10_000)


async def test_create_replay_gives_the_same_answer(client: Client) -> None:
    """The same Idempotency-Key and reference again answer the same, with no duplicate."""
    headers = await authed(client)
    first = await create_payment(client, headers)
    again = await create_payment(client, headers)
    assert again.status == 201
    assert await again.json() == await first.json()
    assert len(emulator_state(client.app).payments) == 1


async def test_reference_reused_with_another_key_conflicts(client: Client) -> None:
    """A reference reused with another Idempotency-Key gets 409."""
    headers = await authed(client)
    await create_payment(client, headers, key="key-1")
    response = await create_payment(client, headers, key="key-2")
    assert response.status == 409
    assert response.content_type == "application/problem+json"


async def test_create_without_idempotency_key_is_400(client: Client) -> None:
    """Creating a payment without Idempotency-Key gets a 400 problem."""
    headers = await authed(client)
    response = await client.post("/epayment/v1/payments", json=payment_body(), headers=headers)
    assert response.status == 400
    assert response.content_type == "application/problem+json"


async def test_invalid_create_body_lists_each_error(client: Client) -> None:
    """An invalid create body gets 400 with extraDetails naming each wrong field."""
    headers = {**await authed(client), "Idempotency-Key": "key-1"}
    body = {"amount": {"currency": "SEK", "value": 1.5}, "reference": "short"}
    response = await client.post("/epayment/v1/payments", json=body, headers=headers)
    names = {item["name"] for item in (await response.json())["extraDetails"]}
    assert response.status == 400
    assert {
        "amount.currency",
        "amount.value",
        "paymentMethod.type",
        "reference",
        "userFlow",
    } <= names


async def test_capture_beyond_the_amount_is_400(client: Client) -> None:
    """Capturing more than is authorized gets a 400 problem."""
    headers = await authed(client)
    await approved_payment(client, headers)
    response = await adjust(client, headers, "capture", 10_001, "capture-1")
    assert response.status == 400


async def test_refund_beyond_the_captured_is_400(client: Client) -> None:
    """Refunding more than is captured gets a 400 problem."""
    headers = await authed(client)
    await approved_payment(client, headers)
    await adjust(client, headers, "capture", 1_000, "capture-1")
    response = await adjust(client, headers, "refund", 1_001, "refund-1")
    assert response.status == 400


async def test_capture_replay_captures_once(client: Client) -> None:
    """A capture replayed with its Idempotency-Key does not capture twice."""
    headers = await authed(client)
    await approved_payment(client, headers)
    await adjust(client, headers, "capture", 3_000, "capture-1")
    again = await adjust(client, headers, "capture", 3_000, "capture-1")
    assert again.status == 200
    assert (await again.json())["aggregate"]["capturedAmount"] == nok(3_000)


async def test_cancel_terminates_and_then_capture_conflicts(client: Client) -> None:
    """A cancelled, uncaptured payment is TERMINATED and can no longer be captured."""
    headers = await authed(client)
    await approved_payment(client, headers)
    cancelled = await adjust(client, headers, "cancel", None, "cancel-1")
    capture = await adjust(client, headers, "capture", 1_000, "capture-1")
    body = await cancelled.json()
    assert body["state"] == "TERMINATED"
    assert body["aggregate"]["cancelledAmount"] == nok(10_000)
    assert capture.status == 409


async def test_events_log_each_step(client: Client) -> None:
    """The event log lists CREATED, AUTHORIZED and CAPTURED in order."""
    headers = await authed(client)
    await approved_payment(client, headers)
    await adjust(client, headers, "capture", 2_000, "capture-1")
    response = await client.get("/epayment/v1/payments/order-123456/events", headers=headers)
    events = await response.json()
    assert [event["name"] for event in events] == ["CREATED", "AUTHORIZED", "CAPTURED"]
    assert events[-1]["idempotencyKey"] == "capture-1"


async def test_a_new_payment_waits_in_created_until_the_user_approves(client: Client) -> None:
    """As at Vipps, a payment is CREATED (not capturable) until the test approve call."""
    headers = await authed(client)
    await create_payment(client, headers)
    fetched = await client.get("/epayment/v1/payments/order-123456", headers=headers)
    early = await adjust(client, headers, "capture", 1_000, "capture-1")
    approve = "/epayment/v1/test/payments/order-123456/approve"
    approved = await client.post(approve, headers=headers, json={})
    late = await adjust(client, headers, "capture", 1_000, "capture-2")
    assert (await fetched.json())["state"] == "CREATED"
    assert early.status == 409
    assert approved.status == 200
    assert late.status == 200


async def test_auto_approve_waits_its_seconds(make_client: MakeClient) -> None:
    """With auto_approve = 60 a payment is still CREATED right after its creation."""
    client = await make_client(auto_approve=60)
    headers = await authed(client)
    await create_payment(client, headers)
    fetched = await client.get("/epayment/v1/payments/order-123456", headers=headers)
    assert (await fetched.json())["state"] == "CREATED"


async def test_auto_approve_approves_once_its_seconds_passed(make_client: MakeClient) -> None:
    """With auto_approve a payment becomes AUTHORIZED by itself, as if the user said yes."""
    client = await make_client(auto_approve=0.05)
    headers = await authed(client)
    await create_payment(client, headers)
    state = "CREATED"
    for _ in range(200):  # a bounded wait, not a timing assertion
        fetched = await client.get("/epayment/v1/payments/order-123456", headers=headers)
        state = (await fetched.json())["state"]
        if state != "CREATED":
            break
        await asyncio.sleep(0.05)
    assert state == "AUTHORIZED"
    captured = await adjust(client, headers, "capture", 1_000, "capture-1")
    assert captured.status == 200


async def test_payment_of_another_unit_is_not_found(client: Client) -> None:
    """A payment is invisible to every sales unit but its own."""
    await create_payment(client, await authed(client, DEMO_SALES_UNIT))
    other = await authed(client, DEMO_SALES_UNIT_2)
    response = await client.get("/epayment/v1/payments/order-123456", headers=other)
    assert response.status == 404


# --- Checkout and Login ------------------------------------------------------------


def checkout_headers(secret: str = DEMO_CLIENT_SECRET) -> dict[str, str]:
    """The client-credentials headers Checkout v3 wants."""
    return {
        "client_id": DEMO_CLIENT_ID,
        "client_secret": secret,
        "Ocp-Apim-Subscription-Key": DEMO_SUBSCRIPTION_KEY,
        "Merchant-Serial-Number": DEMO_MERCHANT_SERIAL_NUMBER,
    }


CHECKOUT_BODY = {"transaction": {"amount": nok(5_000), "reference": "checkout-1234"}}


async def test_checkout_session_with_client_credentials(client: Client) -> None:
    """Checkout v3 takes client credentials (no token) and then serves the session."""
    created = await client.post(
        "/checkout/v3/session", json=CHECKOUT_BODY, headers=checkout_headers()
    )
    fetched = await client.get("/checkout/v3/session/checkout-1234", headers=checkout_headers())
    assert created.status == 201
    assert {"token", "checkoutFrontendUrl", "pollingUrl"} == set(await created.json())
    assert fetched.status == 200
    assert (await fetched.json())["reference"] == "checkout-1234"


async def test_checkout_with_a_wrong_secret_is_401(client: Client) -> None:
    """Checkout v3 with a wrong client secret gets 401 that does not echo it."""
    response = await client.post(
        "/checkout/v3/session", json=CHECKOUT_BODY, headers=checkout_headers("nope-secret")
    )
    assert response.status == 401
    assert "nope-secret" not in await response.text()


async def test_openid_configuration_needs_no_auth(client: Client) -> None:
    """The Login discovery document is served without credentials."""
    response = await client.get("/access-management-1.0/access/.well-known/openid-configuration")
    body = await response.json()
    assert response.status == 200
    assert body["issuer"].endswith("/access-management-1.0/access/")


async def test_userinfo_answers_a_token_it_issued_without_subscription_key(
    client: Client,
) -> None:
    """Userinfo answers a bearer token the emulator issued when no subscription key is sent."""
    headers = {"Authorization": f"Bearer {await fetch_token(client)}"}
    response = await client.get("/vipps-userinfo-api/userinfo/some-sub", headers=headers)
    assert response.status == 200
    assert (await response.json())["sub"] == "some-sub"


@pytest.mark.parametrize(
    "token", ["a-user-token", "<This value will be overwritten by the pre-request script>"]
)
async def test_userinfo_refuses_a_bearer_it_never_issued(client: Client, token: str) -> None:
    """Any other bearer, a Postman placeholder included, gets the gateway's 401."""
    headers = {"Authorization": f"Bearer {token}"}
    response = await client.get("/vipps-userinfo-api/userinfo/some-sub", headers=headers)
    assert response.status == 401
    assert (await response.json())["statusCode"] == 401


async def test_userinfo_refuses_a_subscription_key(client: Client) -> None:
    """Userinfo refuses, like the real one, a request carrying a subscription key."""
    headers = {
        "Authorization": "Bearer a-user-token",
        "Ocp-Apim-Subscription-Key": DEMO_SUBSCRIPTION_KEY,
    }
    response = await client.get("/vipps-userinfo-api/userinfo/some-sub", headers=headers)
    assert response.status == 401
    assert (await response.json())["statusCode"] == 401


async def test_userinfo_needs_a_bearer(client: Client) -> None:
    """Userinfo without a bearer token gets 401."""
    response = await client.get("/vipps-userinfo-api/userinfo/some-sub")
    assert response.status == 401


# --- echo and other diagnostics ----------------------------------------------------


async def raw_exchange(client: Client, request: bytes) -> dict[str, Any]:
    """Send ``request`` byte for byte over a new connection; the JSON body of the answer."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answer: dict[str, Any] = json.loads(await reader.readexactly(length))
    finally:
        writer.close()
        await writer.wait_closed()
    return answer


@pytest.mark.parametrize(
    "raw_path",
    ["/echo/a%2Fb?x=1+2&y=&z=%C3%A6", "/echo/%7Euser/./x;p=1?a=%20&a=b", "/echo/?", "/echo//x"],
)
async def test_echo_preserves_the_raw_path(client: Client, raw_path: str) -> None:
    """Echo reports path and query exactly as they came over the wire."""
    request = f"GET {raw_path} HTTP/1.1\r\nHost: emulator\r\nConnection: close\r\n\r\n"
    answer = await raw_exchange(client, request.encode())
    assert answer["raw_path"] == raw_path


async def test_echo_keeps_header_order_and_repeats(client: Client) -> None:
    """Echo lists the headers in arrival order, repeats and case included."""
    request = (
        b"POST /echo/h HTTP/1.1\r\nHost: emulator\r\nX-A: 1\r\nX-B: two\r\n"
        b"x-a: 3\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    answer = await raw_exchange(client, request)
    echoed = [tuple(pair) for pair in answer["headers"]]
    assert [pair for pair in echoed if pair[0].lower().startswith("x-")] == [
        ("X-A", "1"),
        ("X-B", "two"),
        ("x-a", "3"),
    ]


async def test_echo_measures_a_streamed_body(client: Client) -> None:
    """Echo reads a chunked upload through and reports its length and SHA-256."""
    chunk, count = b"\x00\x01vipps" * 10_000, 200
    expected = hashlib.sha256(chunk * count).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk

    response = await client.put("/echo/upload", data=body())
    answer = await response.json()
    assert answer["body_length"] == len(chunk) * count
    assert answer["body_sha256"] == expected


async def test_received_requests_record_headers_and_body_length(client: Client) -> None:
    """The state records each API request's method, raw path, headers and body length."""
    headers = CIMultiDict([("X-Rep", "a"), ("X-Rep", "b")])
    await client.post("/echo/r?q=1", data=b"12345", headers=headers)
    received = emulator_state(client.app).received[-1]
    assert (received.method, received.raw_path, received.body_length) == ("POST", "/echo/r?q=1", 5)
    assert received.values("x-rep") == ["a", "b"]


async def test_received_request_repr_masks_secrets(client: Client) -> None:
    """A received request's repr shows no token or subscription key."""
    token = await fetch_token(client)
    await client.get("/echo/x", headers=api_headers(token))
    text = repr(emulator_state(client.app).received[-1])
    assert token not in text
    assert DEMO_SUBSCRIPTION_KEY not in text


async def test_download_streams_the_pattern_with_length(client: Client) -> None:
    """Download streams n pattern bytes with Content-Length and repeated headers."""
    size = 3 * 65_536 + 123
    response = await client.get(f"/download/{size}")
    data = await response.read()
    assert response.headers["Content-Length"] == str(size)
    assert data == bytes(i % 256 for i in range(size))
    assert len(response.headers.getall("Set-Cookie")) == 2
    assert response.headers.getall("X-Echo-Multi") == ["first", "second"]


async def test_download_chunked_has_no_length(client: Client) -> None:
    """Download with ?chunked=1 streams without Content-Length."""
    response = await client.get("/download/100000?chunked=1")
    data = await response.read()
    assert "Content-Length" not in response.headers
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert len(data) == 100_000


@pytest.mark.parametrize("code", [200, 201, 400, 404, 500, 503])
async def test_status_answers_that_status(client: Client, code: int) -> None:
    """GET /status/{code} answers with that status and a small JSON body."""
    response = await client.get(f"/status/{code}")
    assert response.status == code
    assert (await response.json())["status"] == code


@pytest.mark.parametrize("code", [204, 304])
async def test_status_without_body(client: Client, code: int) -> None:
    """GET /status/204 and /status/304 answer without a body."""
    response = await client.get(f"/status/{code}")
    assert response.status == code
    assert await response.read() == b""


async def test_status_redirect_is_not_followed_by_us(client: Client) -> None:
    """A 3xx status carries a Location for redirect tests."""
    response = await client.get("/status/302", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/echo/redirected"


async def test_slow_sleeps_before_answering(client: Client) -> None:
    """GET /slow/{seconds} answers after that long."""
    started = time.monotonic()
    response = await client.get("/slow/0.2")
    assert response.status == 200
    assert time.monotonic() - started >= 0.2


# --- faults ------------------------------------------------------------------------


def set_faults(client: Client, **switches: Any) -> None:
    """Switch faults on in the emulator behind ``client``."""
    emulator_state(client.app).faults = Faults(**switches)


async def test_token_down_closes_the_connection(client: Client) -> None:
    """The "down" token fault drops the connection without an answer."""
    set_faults(client, token="down")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post("/accesstoken/get", headers=token_headers())


async def test_token_slow_delays_the_answer(client: Client) -> None:
    """The "slow" token fault answers after token_delay."""
    set_faults(client, token="slow", token_delay=0.2)
    started = time.monotonic()
    response = await client.post("/accesstoken/get", headers=token_headers())
    assert response.status == 200
    assert time.monotonic() - started >= 0.2


async def test_token_error500_answers_html(client: Client) -> None:
    """The "error500" token fault answers 500 with an HTML body."""
    set_faults(client, token="error500")
    response = await client.post("/accesstoken/get", headers=token_headers())
    assert response.status == 500
    assert response.content_type == "text/html"


async def test_token_invalid_json_is_unparseable(client: Client) -> None:
    """The "invalid_json" token fault answers 200 with a body that is not JSON."""
    set_faults(client, token="invalid_json")
    response = await client.post("/accesstoken/get", headers=token_headers())
    assert response.status == 200
    with pytest.raises(ValueError, match=r"Expecting|Unterminated"):
        await response.json()


async def test_token_missing_fields_lacks_the_token(client: Client) -> None:
    """The "missing_fields" token fault answers 200 without access_token."""
    set_faults(client, token="missing_fields")
    response = await client.post("/accesstoken/get", headers=token_headers())
    body = await response.json()
    assert response.status == 200
    assert "access_token" not in body
    assert "expires_in" in body


async def test_expires_in_override_sets_the_real_lifetime(client: Client) -> None:
    """expires_in_override is both announced and enforced: 0 is dead on arrival."""
    set_faults(client, expires_in_override=0)
    body = await (await client.post("/accesstoken/get", headers=token_headers())).json()
    headers = api_headers(body["access_token"])
    response = await client.get("/epayment/v1/payments/order-000000", headers=headers)
    assert body["expires_in"] == "0"
    assert response.status == 401


async def test_huge_expires_in_override_is_announced(client: Client) -> None:
    """A huge expires_in_override is announced and the token works."""
    set_faults(client, expires_in_override=10**9)
    body = await (await client.post("/accesstoken/get", headers=token_headers())).json()
    response = await client.get("/echo/x", headers=api_headers(body["access_token"]))
    assert body["expires_in"] == str(10**9)
    assert response.status == 200


@pytest.mark.parametrize(("fault", "status"), [("error500", 500), ("error503", 503)])
async def test_api_error_faults_answer_a_problem(client: Client, fault: str, status: int) -> None:
    """The "error500"/"error503" API faults answer that status as a problem."""
    set_faults(client, api=fault)
    response = await client.get("/echo/x")
    assert response.status == status
    assert response.content_type == "application/problem+json"


async def test_api_error503_says_when_to_retry(client: Client) -> None:
    """The "error503" API fault sends Retry-After."""
    set_faults(client, api="error503")
    response = await client.get("/echo/x")
    assert response.headers["Retry-After"] == "1"


async def test_stall_headers_delays_the_headers(client: Client) -> None:
    """The "stall_headers" API fault answers only after api_delay."""
    set_faults(client, api="stall_headers", api_delay=0.2)
    started = time.monotonic()
    response = await client.get("/echo/x")
    assert response.status == 200
    assert time.monotonic() - started >= 0.2


async def test_stall_body_sends_headers_then_stalls(client: Client) -> None:
    """The "stall_body" API fault sends headers at once, the rest after api_delay."""
    set_faults(client, api="stall_body", api_delay=0.3)
    started = time.monotonic()
    response = await client.get("/download/200000")
    headers_after = time.monotonic() - started
    data = await response.read()
    assert headers_after < 0.3
    assert time.monotonic() - started >= 0.3
    assert len(data) == 200_000


async def test_stall_body_stalls_a_json_answer(client: Client) -> None:
    """The "stall_body" API fault also splits an ordinary JSON answer around the stall."""
    set_faults(client, api="stall_body", api_delay=0.2)
    started = time.monotonic()
    response = await client.get("/echo/x")
    body = await response.json()
    assert time.monotonic() - started >= 0.2
    assert body["raw_path"] == "/echo/x"


async def test_reset_mid_body_breaks_the_download(client: Client) -> None:
    """The "reset_mid_body" API fault sends part of the body, then aborts."""
    set_faults(client, api="reset_mid_body")
    response = await client.get("/download/1000000")
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_reset_mid_body_still_creates_the_payment(client: Client) -> None:
    """Under "reset_mid_body" the payment is made though its answer is lost; a replay finds it."""
    headers = await authed(client)
    set_faults(client, api="reset_mid_body", fail_count=1)
    lost = await create_payment(client, headers)
    with pytest.raises(aiohttp.ClientPayloadError):
        await lost.read()
    replay = await create_payment(client, headers)
    assert replay.status == 201
    assert len(emulator_state(client.app).payments) == 1


async def test_reset_drops_the_connection(client: Client) -> None:
    """The "reset" API fault aborts the connection without an answer."""
    set_faults(client, api="reset")
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.post("/echo/x", data=b"payload")


async def test_fail_count_clears_the_fault(client: Client) -> None:
    """With fail_count=2 two requests fail, the third succeeds and all switches are off."""
    set_faults(client, api="error500", fail_count=2)
    statuses = [(await client.get("/echo/x")).status for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert emulator_state(client.app).faults == Faults()


async def test_token_fail_count_clears_the_fault(client: Client) -> None:
    """A token fault with fail_count=1 hits one token request, then the next is served."""
    set_faults(client, token="error500", fail_count=1)
    first = await client.post("/accesstoken/get", headers=token_headers())
    second = await client.post("/accesstoken/get", headers=token_headers())
    assert (first.status, second.status) == (500, 200)


async def test_api_faults_spare_checkout_and_tokens(client: Client) -> None:
    """API faults leave the token endpoints and Checkout alone."""
    set_faults(client, api="error500")
    token = await client.post("/accesstoken/get", headers=token_headers())
    session = await client.post(
        "/checkout/v3/session", json=CHECKOUT_BODY, headers=checkout_headers()
    )
    assert (token.status, session.status) == (200, 201)


async def test_no_secret_is_logged(client: Client) -> None:
    """Token issues and faults are logged without any secret or token."""
    with structlog.testing.capture_logs() as logs:
        token = await fetch_token(client)
        set_faults(client, api="error500", fail_count=1)
        await client.get("/echo/x", headers=api_headers(token))
    text = repr(logs)
    assert logs
    for secret in (token, DEMO_CLIENT_SECRET, DEMO_SUBSCRIPTION_KEY):
        assert secret not in text


# --- admin app and serving ---------------------------------------------------------


@pytest.fixture
async def admin(client: Client, aiohttp_client: AiohttpClient) -> Client:
    """A client for the admin app of the ``client`` emulator."""
    return await aiohttp_client(create_admin_app(emulator_state(client.app)))


async def test_admin_put_sets_fault_fields(client: Client, admin: Client) -> None:
    """PUT /faults sets the given fields and leaves the others."""
    response = await admin.put("/faults", json={"api": "reset", "fail_count": 3})
    faults = emulator_state(client.app).faults
    assert response.status == 200
    assert (faults.api, faults.fail_count, faults.token) == ("reset", 3, None)
    assert (await (await admin.get("/faults")).json())["api"] == "reset"


async def test_admin_delete_clears_faults(client: Client, admin: Client) -> None:
    """DELETE /faults switches everything off."""
    set_faults(client, token="down", api="reset")
    await admin.delete("/faults")
    assert emulator_state(client.app).faults == Faults()


async def test_admin_rejects_a_bad_fault(client: Client, admin: Client) -> None:
    """PUT /faults with an unknown value gets 400 naming the field, and changes nothing."""
    response = await admin.put("/faults", json={"api": "reset", "token": "explode"})
    assert response.status == 400
    assert "token" in (await response.json())["detail"]
    assert emulator_state(client.app).faults == Faults()


async def test_admin_stats_count(client: Client, admin: Client) -> None:
    """GET /stats counts token requests, payments and received API requests."""
    headers = await authed(client)
    await create_payment(client, headers)
    stats = await (await admin.get("/stats")).json()
    assert stats["token_requests"]["accesstoken"] == 1
    assert stats["payments"] == 1
    assert stats["received_requests"] == 1


async def test_admin_requests_mask_secrets(client: Client, admin: Client) -> None:
    """GET /requests lists received requests with secret header values masked."""
    token = await fetch_token(client)
    await client.get("/echo/x", headers=api_headers(token))
    text = await (await admin.get("/requests")).text()
    assert "/echo/x" in text
    assert token not in text
    assert DEMO_SUBSCRIPTION_KEY not in text


async def test_serve_emulator_keeps_admin_off_the_api_port() -> None:
    """serve_emulator listens on two ports; the admin routes exist only on their own."""
    async with serve_emulator() as running, aiohttp.ClientSession() as session:
        on_admin = await session.get(running.admin_url / "faults")
        on_api = await session.get(running.url / "faults")
        assert running.url.port != running.admin_url.port
        assert on_admin.status == 200
        assert on_api.status in (401, 404)


async def test_wrong_method_is_a_405_problem(client: Client) -> None:
    """A known path with the wrong method gets a 405 problem with Allow."""
    response = await client.delete("/epayment/v1/payments", headers=await authed(client))
    assert response.status == 405
    assert response.content_type == "application/problem+json"
    assert "POST" in response.headers["Allow"]
