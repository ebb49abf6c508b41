"""Clients nobody here wrote, driven through the proxy against the emulator.

The official Vipps MobilePay SDK for JavaScript (``@vippsmobilepay/sdk``, pinned in
``tests/clients/package-lock.json``) runs a whole payment flow in ``node`` with dummy
credentials, or none: the proxy answers the SDK's token call with a placeholder and
sends every API call on with its own real token and keys. The SDK has no base-URL
option, so ``tests/clients/sdk_flow.mjs`` rewrites the origin of its ``fetch``.

The packages come from ``npm ci --prefix tests/clients`` (``make test`` runs it first);
when they are missing the first test runs that command itself. The tests are skipped
only when node or the packages cannot be had, and never under CI, where that fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import orjson
import pytest
from yarl import URL

from proxy.emulator import ReceivedRequest

from .conftest import (
    DEMO,
    DEMO_MSN,
    DEMO_SUBSCRIPTION_KEY,
    TOKEN_FIELDS,
    ProxyFactory,
    RunningEmulator,
    RunningProxy,
    make_config,
)

CLIENTS = Path(__file__).parent / "clients"
SDK_FLOW = CLIENTS / "sdk_flow.mjs"
SDK_PACKAGE = CLIENTS / "node_modules" / "@vippsmobilepay" / "sdk" / "package.json"
INSTALL = ("npm", "ci", "--prefix", str(CLIENTS), "--no-audit", "--no-fund")
INSTALL_HINT = "run `npm ci --prefix tests/clients` (make test does)"
INSTALL_SECONDS = 300
FLOW_SECONDS = 60
SDK_ORIGIN = "https://apitest.vipps.no"

DUMMY_CLIENT_ID = "dummy-client-id-not-a-vipps-key"
DUMMY_CLIENT_SECRET = "dummy-client-secret-not-a-vipps-key"
DUMMY_SUBSCRIPTION_KEY = "dummy-subscription-key-not-a-vipps-key"
DUMMY_VALUES = (DUMMY_CLIENT_ID, DUMMY_CLIENT_SECRET, DUMMY_SUBSCRIPTION_KEY)
DUMMY_CREDENTIALS = {
    "VIPPS_CLIENT_ID": DUMMY_CLIENT_ID,
    "VIPPS_CLIENT_SECRET": DUMMY_CLIENT_SECRET,
    "VIPPS_SUBSCRIPTION_KEY": DUMMY_SUBSCRIPTION_KEY,
    "VIPPS_MSN": DEMO_MSN,  # not a secret: a legacy app keeps its real number
}
EPAYMENT_STEPS = (
    "token",
    "createA",
    "approveA",
    "infoA",
    "captureA",
    "refundA",
    "historyA",
    "createB",
    "approveB",
    "cancelB",
    "infoB",
)

Flow = dict[str, Any]


def _unavailable(reason: str) -> NoReturn:
    """Skip for ``reason``; under CI fail instead, so a missing install never hides."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` binary, with the client packages installed (``npm ci`` if missing)."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node (v20 or later) is not on PATH")
    if not SDK_PACKAGE.exists():
        npm = shutil.which("npm")
        if npm is None:
            _unavailable(
                f"tests/clients/node_modules is missing and npm is not on PATH: {INSTALL_HINT}"
            )
        try:
            done = subprocess.run(
                [npm, *INSTALL[1:]],
                capture_output=True,
                text=True,
                timeout=INSTALL_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired:
            _unavailable(f"npm ci did not finish in {INSTALL_SECONDS} s: {INSTALL_HINT}")
        else:
            if done.returncode != 0 or not SDK_PACKAGE.exists():
                tail = done.stderr.strip()[-500:]
                _unavailable(f"npm ci failed ({done.returncode}), {INSTALL_HINT}: {tail}")
    return node


async def run_flow(node: str, proxy: RunningProxy, name: str, credentials: dict[str, str]) -> Flow:
    """Runs ``sdk_flow.mjs`` flow ``name`` against the proxy; its JSON result.

    The SDK's environment holds only ``credentials`` (no inherited ``VIPPS_*``), and the
    result is checked to have gone to the proxy, not to the SDK's Vipps origin.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIPPS_")}
    env |= {"VIPPS_BASE_URL": str(proxy.url), "VIPPS_FLOW": name, **credentials}
    process = await asyncio.create_subprocess_exec(
        node,
        str(SDK_FLOW),
        cwd=CLIENTS,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), FLOW_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the SDK flow did not end within {FLOW_SECONDS} s") from None
    assert process.returncode == 0, stderr.decode(errors="replace")
    flow: Flow = orjson.loads(stdout)
    for sent in flow["requests"]:
        assert sent["sdk_url"].startswith(SDK_ORIGIN + "/"), sent
        assert sent["sent_url"].startswith(f"{proxy.url}/"), sent
    return flow


def failed_steps(flow: Flow) -> dict[str, Any]:
    """The steps the SDK reported as failed, with their errors."""
    return {name: step["error"] for name, step in flow["steps"].items() if not step["ok"]}


def data(flow: Flow, step: str) -> Any:
    """What the SDK got back from a step that succeeded."""
    assert flow["steps"][step]["ok"], flow["steps"][step]
    return flow["steps"][step]["data"]


def bearer(received: ReceivedRequest) -> str:
    """The token of the request's one ``Authorization: Bearer`` header."""
    [value] = received.values("Authorization")
    scheme, _, token = value.partition(" ")
    assert scheme == "Bearer", value
    return token


def assert_no_client_credentials(received: ReceivedRequest, *client_values: str) -> None:
    """No header of ``received`` carries one of the client's own credential values."""
    for name, value in received.headers:
        for secret in client_values:
            assert secret not in value, f"{name} carries the client's own {secret!r}"


SYSTEM_DEFAULTS = {
    "system_name": "legacy-erp",
    "system_version": "4.2",
    "plugin_name": "vipps-sdk-bridge",
    "plugin_version": "1.0",
}
SYSTEM_HEADERS = {
    "Vipps-System-Name": "legacy-erp",
    "Vipps-System-Version": "4.2",
    "Vipps-System-Plugin-Name": "vipps-sdk-bridge",
    "Vipps-System-Plugin-Version": "1.0",
}


@pytest.fixture
async def sdk_proxy(emulator: RunningEmulator, start_proxy: ProxyFactory) -> RunningProxy:
    """The proxy with ePayment on bearer auth and Checkout v3 on client credentials."""
    upstream = str(emulator.url)
    routes = [
        {"prefix": "/", "upstream": upstream, "auth": "bearer"},
        {"prefix": "/checkout/", "upstream": upstream, "auth": "client-credentials"},
    ]
    config = make_config(emulator.token_url, credentials=SYSTEM_DEFAULTS, extra={"routes": routes})
    return await start_proxy(config)


async def test_sdk_payment_flow_with_dummy_credentials_succeeds(
    node: str, sdk_proxy: RunningProxy
) -> None:
    """The SDK, holding dummy credentials, creates, approves, captures, refunds, cancels."""
    flow = await run_flow(node, sdk_proxy, "epayment", DUMMY_CREDENTIALS)

    assert failed_steps(flow) == {}
    assert tuple(flow["steps"]) == EPAYMENT_STEPS
    a, b = flow["references"]["A"], flow["references"]["B"]
    assert data(flow, "createA")["reference"] == a
    assert data(flow, "infoA")["state"] == "AUTHORIZED"
    assert data(flow, "captureA")["aggregate"]["capturedAmount"] == {
        "currency": "NOK",
        "value": 600,
    }
    assert data(flow, "refundA")["aggregate"]["refundedAmount"] == {"currency": "NOK", "value": 200}
    events = [event["name"] for event in data(flow, "historyA")]
    assert events == ["CREATED", "AUTHORIZED", "CAPTURED", "REFUNDED"]
    assert data(flow, "cancelB")["aggregate"]["cancelledAmount"] == {
        "currency": "NOK",
        "value": 1000,
    }
    assert data(flow, "infoB")["reference"] == b
    assert data(flow, "infoB")["state"] == "TERMINATED"


async def test_sdk_calls_reach_vipps_with_the_proxys_credentials_only(
    node: str, sdk_proxy: RunningProxy, emulator: RunningEmulator
) -> None:
    """Every SDK call arrives with the proxy's real token and key, no dummy value left."""
    flow = await run_flow(node, sdk_proxy, "epayment", DUMMY_CREDENTIALS)
    assert failed_steps(flow) == {}

    received = list(emulator.state.received)
    assert len(received) == len(EPAYMENT_STEPS) - 1  # all but the token call
    for request in received:
        assert emulator.state.token_owner(bearer(request)) == DEMO, request
        assert request.values("Ocp-Apim-Subscription-Key") == [DEMO_SUBSCRIPTION_KEY]
        assert request.values("Merchant-Serial-Number") == [DEMO_MSN]
        assert_no_client_credentials(request, *DUMMY_VALUES)


async def test_sdk_token_call_is_answered_by_the_proxy_with_a_placeholder(
    node: str, sdk_proxy: RunningProxy, emulator: RunningEmulator
) -> None:
    """The SDK gets seven string fields and a token that is no real Vipps token."""
    flow = await run_flow(node, sdk_proxy, "epayment", DUMMY_CREDENTIALS)

    token = data(flow, "token")
    assert set(token) == TOKEN_FIELDS
    assert all(isinstance(token[name], str) for name in TOKEN_FIELDS), token
    assert token["access_token"]
    assert emulator.state.token_owner(token["access_token"]) is None
    # The one token call Vipps saw is the proxy's own: the SDK's never left the proxy.
    assert emulator.state.token_requests["accesstoken"] == 1


async def test_sdk_with_no_credentials_at_all_completes_the_flow(
    node: str, sdk_proxy: RunningProxy, emulator: RunningEmulator
) -> None:
    """An SDK configured with nothing sends "undefined" everywhere; the proxy fills it in."""
    flow = await run_flow(node, sdk_proxy, "epayment", {})

    assert failed_steps(flow) == {}
    assert data(flow, "infoB")["state"] == "TERMINATED"
    for request in emulator.state.received:
        assert emulator.state.token_owner(bearer(request)) == DEMO, request
        assert request.values("Ocp-Apim-Subscription-Key") == [DEMO_SUBSCRIPTION_KEY]
        assert request.values("Merchant-Serial-Number") == [DEMO_MSN]
        assert_no_client_credentials(request, "undefined")


async def test_sdk_checkout_session_with_dummy_client_credentials_succeeds(
    node: str, sdk_proxy: RunningProxy, emulator: RunningEmulator
) -> None:
    """Checkout v3 through the SDK: the proxy swaps in the real client id and secret."""
    flow = await run_flow(node, sdk_proxy, "checkout", DUMMY_CREDENTIALS)

    assert failed_steps(flow) == {}
    session = flow["references"]["session"]
    created = data(flow, "sessionCreate")
    assert created["token"]
    assert URL(created["pollingUrl"]).path.endswith(f"/checkout/v3/session/{session}")
    info = data(flow, "sessionInfo")
    assert (info["reference"], info["merchantSerialNumber"]) == (session, DEMO_MSN)
    received = list(emulator.state.received)
    assert len(received) == 2
    for request in received:
        assert request.values("client_id") == [DEMO.client_id]
        assert request.values("client_secret") == [DEMO.client_secret]
        assert request.values("Ocp-Apim-Subscription-Key") == [DEMO_SUBSCRIPTION_KEY]
        assert request.values("Authorization") == []  # the SDK's empty "Bearer " is gone
        assert_no_client_credentials(request, *DUMMY_VALUES)


async def test_sdk_empty_system_headers_get_the_configured_defaults(
    node: str, sdk_proxy: RunningProxy, emulator: RunningEmulator
) -> None:
    """The SDK sends empty Vipps-System-* headers when unset; Vipps gets the config's."""
    flow = await run_flow(node, sdk_proxy, "epayment", DUMMY_CREDENTIALS)
    assert failed_steps(flow) == {}

    for request in emulator.state.received:
        for name, value in SYSTEM_HEADERS.items():
            assert request.values(name) == [value], request
