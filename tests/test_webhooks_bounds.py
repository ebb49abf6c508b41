"""The store's bounds under a flood, over real sockets: ``max_pending`` per hook (503)
and ``max_per_minute`` per eCom sender (429 + Retry-After), each refusal counted under
its own result and warned about once per interval."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.conftest import ProxyFactory, RunningEmulator, free_port
from tests.test_webhooks_relay import Relay, start_relay
from tests.webhook_peers import ECOM, HOOK, payment_event, stored, webhooks_table


def refusals(relay: Relay, result: str) -> list[dict[str, Any]]:
    lines = relay.proxy.logs.events("webhook_received")
    return [line for line in lines if line.get("result") == result]


async def received_metric(relay: Relay, path: str, result: str) -> float:
    async with (
        aiohttp.ClientSession() as client,
        client.get(relay.proxy.at("/-/metrics")) as response,
    ):
        text = await response.text()
    wanted = f'vipps_proxy_webhooks_received_total{{path="{path}",result="{result}"}} '
    found = [line for line in text.splitlines() if line.startswith(wanted)]
    return float(found[0].split()[-1]) if found else 0.0


async def test_past_max_pending_a_flood_of_events_gets_503_and_one_warning(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The app is down, so events wait: three are stored, then forty sent at once
    all get 503 problem+json with Retry-After, none is stored, the metric counts them
    under over_max_pending and one warning line says how many were refused."""
    down = free_port()  # nothing listens: every event stays pending
    hooks = [webhooks_table(f"http://127.0.0.1:{down}/vipps/events", max_pending=3)]
    relay = await start_relay(emulator, start_proxy, tmp_path, down, hooks=hooks)
    for n in range(3):
        assert (await relay.send(payment_event(f"order-{n}")))[0] == 200
    flood = [relay.send(payment_event(f"flood-{n}")) for n in range(40)]
    answers = await asyncio.gather(*flood)
    assert {status for status, _, _ in answers} == {503}
    _, headers, body = answers[0]
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["Retry-After"] == "60"
    assert orjson.loads(body)["status"] == 503
    assert len(stored(relay.store)) == 3
    assert await received_metric(relay, HOOK, "over_max_pending") == 40
    (warning,) = refusals(relay, "over_max_pending")
    assert warning["limit"] == 3


async def test_a_concurrent_burst_never_stores_more_than_max_pending(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Thirty distinct events at once against max_pending = 5: exactly five stored."""
    down = free_port()
    hooks = [webhooks_table(f"http://127.0.0.1:{down}/vipps/events", max_pending=5)]
    relay = await start_relay(emulator, start_proxy, tmp_path, down, hooks=hooks)
    answers = await asyncio.gather(*(relay.send(payment_event(f"o-{n}")) for n in range(30)))
    assert sorted(status for status, _, _ in answers) == [200] * 5 + [503] * 25
    assert len(stored(relay.store)) == 5


async def wait_for_a_fresh_minute(margin: float = 20.0) -> None:
    """The per-minute count starts again on each clock minute: start well inside one."""
    left = 60 - time.time() % 60
    if left < margin:
        await asyncio.sleep(left + 0.1)


async def test_an_ecom_sender_past_max_per_minute_gets_429_with_retry_after(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Five keyless callbacks from one address are stored; the flood after them gets
    429 with a Retry-After up to the next minute, is never stored, is counted under
    over_max_per_minute and warned about once."""
    down = free_port()
    hooks = [
        {
            "path": ECOM,
            "kind": "ecom-callback",
            "deliver_to": f"http://127.0.0.1:{down}/cb",
            "max_per_minute": 5,
        }
    ]
    relay = await start_relay(emulator, start_proxy, tmp_path, down, hooks=hooks)
    await wait_for_a_fresh_minute()

    async def callback(client: aiohttp.ClientSession, n: int) -> tuple[int, str]:
        body = orjson.dumps({"orderId": f"o-{n}", "transactionInfo": {"status": "RESERVED"}})
        url = relay.proxy.at(f"{ECOM}/v2/payments/o-{n}")
        async with client.post(url, data=body) as response:
            return response.status, response.headers.get("Retry-After", "")

    async with aiohttp.ClientSession() as client:
        first = [await callback(client, n) for n in range(5)]
        flood = await asyncio.gather(*(callback(client, n) for n in range(5, 45)))
    assert [status for status, _ in first] == [200] * 5
    assert {status for status, _ in flood} == {429}
    assert all(1 <= int(wait) <= 60 for _, wait in flood)
    assert len(stored(relay.store)) == 5
    assert await received_metric(relay, ECOM, "over_max_per_minute") == 40
    (warning,) = refusals(relay, "over_max_per_minute")
    assert warning["client"] == "127.0.0.1"
