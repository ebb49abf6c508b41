"""eCom v2 in the emulator, as legacy apps use it: initiate, approve, details, capture
(full and partial), refund, cancel, with the statuses, errors and transaction log the
eCom v2 spec and guide document (``tests/specs/vipps-ecom-api.yaml``)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import hypothesis
import orjson
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient
from vipps import VippsEcomApi  # type: ignore[import-untyped]
from yarl import URL

from proxy.emulator import (
    DEMO_SALES_UNIT,
    DEMO_SALES_UNIT_2,
    EmulatorSettings,
    create_admin_app,
    create_emulator,
    emulator_state,
)
from proxy.emulator.ecom import ECOM_KEY
from proxy.emulator.ecomorders import EcomError, EcomOrder

from .conftest import ProxyFactory, RunningEmulator, make_config
from .test_emulator import authed
from .webhook_peers import LegacyApp, eventually

Client = TestClient[Any, Any]
ORDER = "/ecomm/v2/payments/order-1"
AMOUNT = 20_000


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    """A client for an emulator with the default settings."""
    return await aiohttp_client(create_emulator())


def initiate_body(callback: str = "https://example.com/cb", **merchant: str) -> dict[str, Any]:
    """An InitiatePaymentCommand for ``order-1`` of 200 kr, as the guide shows one."""
    return {
        "customerInfo": {},
        "merchantInfo": {
            "merchantSerialNumber": DEMO_SALES_UNIT.merchant_serial_number,
            "callbackPrefix": callback,
            "fallBack": "https://example.com/fallback",
            **merchant,
        },
        "transaction": {"orderId": "order-1", "amount": AMOUNT, "transactionText": "Socks"},
    }


def action(amount: int | None = None, text: str = "Socks on the way") -> dict[str, Any]:
    """A PaymentActionsRequest (capture, refund) or, without amount, a cancel body."""
    transaction: dict[str, Any] = {"transactionText": text}
    if amount is not None:
        transaction["amount"] = amount
    return {"merchantInfo": {"merchantSerialNumber": "123456"}, "transaction": transaction}


async def initiated(client: Client, headers: dict[str, str], **merchant: str) -> None:
    response = await client.post(
        "/ecomm/v2/payments", json=initiate_body(**merchant), headers=headers
    )
    assert response.status == 200, await response.text()


async def reserved(client: Client, headers: dict[str, str]) -> None:
    await initiated(client, headers)
    approve = "/ecomm/v2/integration-test/payments/order-1/approve"
    response = await client.post(approve, json={"token": "t"}, headers=headers)
    assert response.status == 200, await response.text()


async def call(
    client: Client, method: str, op: str, body: Any, headers: dict[str, str], request_id: str = ""
) -> aiohttp.ClientResponse:
    extra = {"X-Request-Id": request_id} if request_id else {}
    return await client.request(method, f"{ORDER}/{op}", json=body, headers={**headers, **extra})


async def error_code(response: aiohttp.ClientResponse) -> str:
    """The errorCode of an eCom error answer (a JSON array of Error objects)."""
    errors = await response.json()
    assert isinstance(errors, list), errors
    return str(errors[0]["errorCode"])


async def operations(client: Client, headers: dict[str, str]) -> list[str]:
    """The details' transaction log, newest first, as operation names."""
    details = await (await client.get(f"{ORDER}/details", headers=headers)).json()
    return [entry["operation"] for entry in details["transactionLogHistory"]]


async def test_an_initiated_order_cannot_be_captured_until_the_user_approves(
    client: Client,
) -> None:
    headers = await authed(client)
    await initiated(client, headers)
    early = await call(client, "POST", "capture", action(), headers)
    assert early.status == 400
    assert await error_code(early) == "62"
    assert await operations(client, headers) == ["INITIATE"]


async def test_a_full_capture_takes_all_that_is_reserved(client: Client) -> None:
    headers = await authed(client)
    await reserved(client, headers)
    response = await call(client, "POST", "capture", action(), headers)
    body = await response.json()
    assert response.status == 200
    assert body["transactionInfo"]["status"] == "Captured"
    assert body["transactionInfo"]["amount"] == AMOUNT
    assert body["transactionSummary"]["remainingAmountToCapture"] == 0
    assert body["transactionSummary"]["remainingAmountToRefund"] == AMOUNT


async def test_partial_captures_stop_at_the_reserved_amount(client: Client) -> None:
    headers = await authed(client)
    await reserved(client, headers)
    first = await call(client, "POST", "capture", action(15_000), headers, "c-1")
    second = await call(client, "POST", "capture", action(5_000), headers, "c-2")
    third = await call(client, "POST", "capture", action(100), headers, "c-3")
    assert (first.status, second.status, third.status) == (200, 200, 400)
    assert (await second.json())["transactionSummary"]["capturedAmount"] == AMOUNT
    assert await error_code(third) == "61"


async def test_a_partial_capture_needs_an_x_request_id(client: Client) -> None:
    headers = await authed(client)
    await reserved(client, headers)
    response = await call(client, "POST", "capture", action(5_000), headers)
    assert response.status == 400
    assert await error_code(response) == "X-Request-Id"


async def test_a_capture_retried_with_its_x_request_id_captures_once(client: Client) -> None:
    headers = await authed(client)
    await reserved(client, headers)
    first = await call(client, "POST", "capture", action(5_000), headers, "same")
    again = await call(client, "POST", "capture", action(5_000), headers, "same")
    other = await call(client, "POST", "capture", action(6_000), headers, "same")
    assert await first.json() == await again.json()
    assert (await again.json())["transactionSummary"]["capturedAmount"] == 5_000
    assert await error_code(other) == "93"


async def test_a_refund_is_refused_beyond_what_was_captured(client: Client) -> None:
    headers = await authed(client)
    await reserved(client, headers)
    await call(client, "POST", "capture", action(5_000), headers, "c-1")
    refunded = await call(client, "POST", "refund", action(5_000), headers, "r-1")
    beyond = await call(client, "POST", "refund", action(100), headers, "r-2")
    body = await refunded.json()
    assert body["transaction"]["status"] == "Refund"
    assert body["transactionSummary"]["remainingAmountToRefund"] == 0
    assert beyond.status == 400
    assert await error_code(beyond) == "71"


async def test_a_reserved_order_cannot_be_refunded(client: Client) -> None:
    headers = await authed(client)
    await reserved(client, headers)
    response = await call(client, "POST", "refund", action(AMOUNT), headers)
    assert response.status == 400
    assert await error_code(response) == "72"


async def test_cancel_after_a_capture_is_refused(client: Client) -> None:
    headers = await authed(client)
    await reserved(client, headers)
    await call(client, "POST", "capture", action(), headers)
    response = await call(client, "PUT", "cancel", action(), headers)
    assert response.status == 400
    assert await error_code(response) == "51"


async def test_cancel_of_a_reserved_order_voids_it_and_ends_captures(client: Client) -> None:
    headers = await authed(client)
    await reserved(client, headers)
    cancelled = await call(client, "PUT", "cancel", action(), headers)
    capture = await call(client, "POST", "capture", action(), headers)
    assert (await cancelled.json())["transactionInfo"]["status"] == "Cancelled"
    assert await error_code(capture) == "91"
    assert await operations(client, headers) == ["VOID", "RESERVE", "INITIATE"]


async def test_cancel_before_approval_logs_cancel(client: Client) -> None:
    headers = await authed(client)
    await initiated(client, headers)
    cancelled = await call(client, "PUT", "cancel", action(), headers)
    assert cancelled.status == 200
    assert await operations(client, headers) == ["CANCEL", "INITIATE"]


async def test_release_remaining_funds_cancels_what_a_partial_capture_left(client: Client) -> None:
    headers = await authed(client)
    await reserved(client, headers)
    await call(client, "POST", "capture", action(5_000), headers, "c-1")
    released = await call(
        client, "PUT", "cancel", {**action(), "shouldReleaseRemainingFunds": True}, headers
    )
    summary = (await released.json())["transactionSummary"]
    assert summary["capturedAmount"] == 5_000
    assert summary["remainingAmountToCapture"] == 0
    assert await operations(client, headers) == ["VOID", "CAPTURE", "RESERVE", "INITIATE"]


async def test_details_list_the_whole_history_newest_first(client: Client) -> None:
    headers = await authed(client)
    await reserved(client, headers)
    await call(client, "POST", "capture", action(), headers, "c-1")
    await call(client, "POST", "refund", action(AMOUNT), headers, "r-1")
    details = await (await client.get(f"{ORDER}/details", headers=headers)).json()
    history = details["transactionLogHistory"]
    assert [e["operation"] for e in history] == ["REFUND", "CAPTURE", "RESERVE", "INITIATE"]
    assert history[0]["requestId"] == "r-1"
    assert all(entry["operationSuccess"] for entry in history)
    assert details["transactionSummary"]["refundedAmount"] == AMOUNT


async def test_a_duplicate_order_id_is_refused(client: Client) -> None:
    headers = await authed(client)
    await initiated(client, headers)
    again = await client.post("/ecomm/v2/payments", json=initiate_body(), headers=headers)
    assert again.status == 400
    assert await error_code(again) == "34"


async def test_an_order_of_another_sales_unit_is_not_found(client: Client) -> None:
    await initiated(client, await authed(client))
    other = await client.get(f"{ORDER}/details", headers=await authed(client, DEMO_SALES_UNIT_2))
    assert other.status == 404
    assert await error_code(other) == "35"


async def test_the_admin_approve_reserves_the_order(
    client: Client, aiohttp_client: AiohttpClient
) -> None:
    headers = await authed(client)
    await initiated(client, headers)
    admin = await aiohttp_client(create_admin_app(emulator_state(client.app)))
    response = await admin.post("/ecom/order-1/approve")
    assert response.status == 200
    assert await operations(client, headers) == ["RESERVE", "INITIATE"]


async def test_auto_approve_reserves_the_order_by_itself(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(create_emulator(EmulatorSettings(auto_approve=0.0)))
    headers = await authed(client)
    await initiated(client, headers)
    orders = client.app[ECOM_KEY].orders
    await eventually(lambda: orders[("123456", "order-1")].status == "RESERVE", "auto approval")
    assert await operations(client, headers) == ["RESERVE", "INITIATE"]


async def test_an_express_order_is_called_back_with_reserve(
    client: Client, aiohttp_client: AiohttpClient, aiohttp_server: Any
) -> None:
    """Express payments say ``RESERVE`` where regular ones say ``RESERVED`` (the guide)."""
    app = LegacyApp()
    server = await aiohttp_server(app.app(), host="127.0.0.1")
    headers = await authed(client)
    callback = str(server.make_url("/cb"))
    await initiated(client, headers, callback=callback, paymentType="eComm Express Payment")
    admin = await aiohttp_client(create_admin_app(emulator_state(client.app)))
    assert (await admin.post("/ecom/order-1/approve")).status == 200
    await eventually(lambda: len(app.received) == 1, "the express callback")
    assert orjson.loads(app.received[0].body)["transactionInfo"]["status"] == "RESERVE"


@hypothesis.given(
    st.lists(st.tuples(st.sampled_from(["capture", "refund"]), st.integers(0, 30_000)))
)
def test_captured_and_refunded_never_pass_their_limits(steps: list[tuple[str, int]]) -> None:
    """Whatever capture and refund amounts come, refunded <= captured <= reserved."""
    order = EcomOrder("order-1", "123456", AMOUNT, "Socks")
    order.approve()
    for n, (kind, amount) in enumerate(steps):
        try:
            if kind == "capture":
                order.capture(amount, "c", f"c-{n}")
            else:
                order.refund(amount, "r", f"r-{n}")
        except EcomError:
            pass
        assert 0 <= order.refunded <= order.captured <= AMOUNT
        assert order.summary_json()["remainingAmountToCapture"] == AMOUNT - order.captured


# The PyPI ``vipps`` client (0.1, the only release): a legacy eCom v2 app's code, run
# unchanged against the proxy, which answers its /accesstoken/get with a placeholder
# and puts the real credentials on its calls to the emulator.


@pytest.fixture
async def legacy_client(
    emulator: RunningEmulator, start_proxy: ProxyFactory, aiohttp_server: Any
) -> VippsEcomApi:
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    callbacks = await aiohttp_server(LegacyApp().app(), host="127.0.0.1")
    return VippsEcomApi(
        client_id="the-app-knows-no-client-id",
        client_secret="the-app-knows-no-secret",
        vipps_subscription_key="the-app-knows-no-key",
        merchant_serial_number=DEMO_SALES_UNIT.merchant_serial_number,
        vipps_server=str(proxy.url),
        callback_prefix=str(callbacks.make_url("/vipps")),
        fall_back="https://example.com/fallback",
    )


async def legacy_approved(api: VippsEcomApi, order_id: str) -> None:
    """``init_payment`` and ``force_approve_payment`` with the token of its URL."""
    started = await asyncio.to_thread(api.init_payment, order_id, AMOUNT, "Socks")
    token = URL(started["url"]).query["token"]
    await asyncio.to_thread(api.force_approve_payment, order_id, "91234567", token)


async def test_the_vipps_pypi_client_captures_and_refunds_through_the_proxy(
    legacy_client: VippsEcomApi,
) -> None:
    await legacy_approved(legacy_client, "legacy-1")
    captured = await asyncio.to_thread(legacy_client.capture_payment, "legacy-1", AMOUNT, "Sent")
    refunded = await asyncio.to_thread(legacy_client.refund_payment, "legacy-1", AMOUNT, "Back")
    details = await asyncio.to_thread(legacy_client.details_payment, "legacy-1")
    assert captured["transactionInfo"]["status"] == "Captured"
    assert refunded["transactionSummary"]["refundedAmount"] == AMOUNT
    history = [entry["operation"] for entry in details["transactionLogHistory"]]
    assert history == ["REFUND", "CAPTURE", "RESERVE", "INITIATE"]


async def test_the_vipps_pypi_client_cancels_through_the_proxy(
    legacy_client: VippsEcomApi,
) -> None:
    await legacy_approved(legacy_client, "legacy-2")
    cancelled = await asyncio.to_thread(legacy_client.cancel_payment, "legacy-2", "Sold out")
    details = await asyncio.to_thread(legacy_client.details_payment, "legacy-2")
    assert cancelled["transactionInfo"]["status"] == "Cancelled"
    history = [entry["operation"] for entry in details["transactionLogHistory"]]
    assert history == ["VOID", "RESERVE", "INITIATE"]
