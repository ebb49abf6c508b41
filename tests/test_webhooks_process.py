"""The relay as real processes: acknowledged events survive kill -9, several workers
deliver each event once, and a signed event altered in any way is refused."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import MAX_AGE
from tests.conftest import free_port
from tests.processes import ProxyProcess, write_config
from tests.webhook_peers import (
    HOOK,
    SECRET,
    LegacyApp,
    eventually,
    payment_event,
    stored,
    vipps_headers,
)

NO_TOKENS = "http://127.0.0.1:9/accesstoken/get"  # nothing here needs a token


def relay_config(
    tmp_path: Path,
    port: int,
    app_port: int,
    *,
    store: str | Path = "events.sqlite3",
    token_url: str = NO_TOKENS,
    upstream: str = "http://127.0.0.1:9",
    **server: object,
) -> Path:
    path = write_config(tmp_path / f"proxy-{port}.toml", token_url, upstream, port, **server)
    with path.open("a") as config:
        config.write(
            f"""
[[webhooks]]
path = "{HOOK}"
kind = "vipps-webhook"
secret = "{SECRET}"
deliver_to = "http://127.0.0.1:{app_port}/vipps/events"

[store]
path = "{store}"
"""
        )
    return path


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def send(process: ProxyProcess, body: bytes) -> int:
    host = f"127.0.0.1:{process.port}"
    return post(process.port, HOOK, body, vipps_headers(body, host, HOOK))


async def start_process(config: Path, port: int, log: Path) -> ProxyProcess:
    return await asyncio.to_thread(ProxyProcess, config, port, log)


async def test_an_acknowledged_event_survives_kill_9_and_is_delivered_after_restart(
    tmp_path: Path, aiohttp_server: Any
) -> None:
    port, app_port = free_port(), free_port()
    config = relay_config(tmp_path, port, app_port)
    first = await start_process(config, port, tmp_path / "first.log")
    body = payment_event("order-kill")
    try:
        assert await asyncio.to_thread(send, first, body) == 200
    finally:
        first.close()  # SIGKILL: no shutdown, no flush, nothing but what was committed
    app = LegacyApp()
    await aiohttp_server(app.app(), host="127.0.0.1", port=app_port)
    second = await start_process(config, port, tmp_path / "second.log")
    try:
        await eventually(lambda: app.bodies() == [body], "delivery after restart", 90)
    finally:
        second.close()
    (event,) = stored(tmp_path / "events.sqlite3")
    assert event.state == "delivered"


async def test_two_workers_deliver_each_event_once(tmp_path: Path, aiohttp_server: Any) -> None:
    port, app_port = free_port(), free_port()
    config = relay_config(tmp_path, port, app_port, workers=2)
    app = LegacyApp()
    await aiohttp_server(app.app(), host="127.0.0.1", port=app_port)
    process = await start_process(config, port, tmp_path / "proxy.log")
    bodies = [payment_event(f"order-{n}") for n in range(30)]
    try:
        for body in bodies:
            assert await asyncio.to_thread(send, process, body) == 200
        store = tmp_path / "events.sqlite3"
        await eventually(lambda: len(stored(store, "delivered")) == 30, "all delivered", 30)
        await asyncio.sleep(1.0)  # a second deliverer would have sent some again by now
    finally:
        process.close()
    assert sorted(app.bodies()) == sorted(bodies)
    log = process.log_path.read_text()
    assert log.count('"webhook_delivery_started"') == 1  # one deliverer; the other waits


@pytest.fixture(scope="module")
def lone_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """A relay whose app is never up: anything accepted stays in its store."""
    tmp_path = tmp_path_factory.mktemp("mutations")
    port = free_port()
    process = ProxyProcess(relay_config(tmp_path, port, free_port()), port, tmp_path / "p.log")
    yield process
    process.close()


MUTATIONS = st.sampled_from(
    [
        "flip_body_bit",
        "append_body",
        "truncate_body",
        "drop_date",
        "drop_hash",
        "drop_authorization",
        "old_date",
        "future_date",
        "other_secret",
        "other_path",
        "other_host",
        "rehash_body",
    ]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(MUTATIONS, st.integers(min_value=0, max_value=10_000), st.binary(min_size=1, max_size=16))
def test_a_mutated_signed_event_gets_401_and_is_never_stored(
    lone_proxy: ProxyProcess, mutation: str, n: int, noise: bytes
) -> None:
    body = payment_event(f"order-{n}", n=n)
    host = f"127.0.0.1:{lone_proxy.port}"
    sent, path = body, HOOK
    headers = vipps_headers(body, host, HOOK)
    if mutation == "flip_body_bit":
        at = n % len(body)
        sent = body[:at] + bytes([body[at] ^ (1 << (n % 8))]) + body[at + 1 :]
    elif mutation == "append_body":
        sent = body + noise
    elif mutation == "truncate_body":
        sent = body[: n % len(body)]
    elif mutation.startswith("drop_"):
        name = {"date": "x-ms-date", "hash": "x-ms-content-sha256"}.get(
            mutation[5:], "Authorization"
        )
        del headers[name]
    elif mutation in ("old_date", "future_date"):
        import time
        from email.utils import formatdate

        shift = (MAX_AGE + 1 + n) * (-1 if mutation == "old_date" else 1)
        headers = vipps_headers(body, host, HOOK, date=formatdate(time.time() + shift, usegmt=True))
    elif mutation == "other_secret":
        headers = vipps_headers(body, host, HOOK, secret=SECRET + noise.hex())
    elif mutation == "other_path":
        path = f"{HOOK}?n={n}"  # signed without the query
    elif mutation == "other_host":
        headers = vipps_headers(body, f"vipps.example:{n}", HOOK)
    else:  # rehash_body: a new body with a matching hash, the old signature
        sent = body + noise
        headers["x-ms-content-sha256"] = vipps_headers(sent, host, HOOK)["x-ms-content-sha256"]
    assert post(lone_proxy.port, path, sent, headers) == 401
    assert all(
        event.body != sent for event in stored(lone_proxy.log_path.parent / "events.sqlite3")
    )


def test_the_unmutated_event_is_accepted_by_the_same_proxy(lone_proxy: ProxyProcess) -> None:
    """The control for the mutations: the event as signed gets 200 and is stored."""
    body = payment_event("order-control")
    assert send(lone_proxy, body) == 200
    store = lone_proxy.log_path.parent / "events.sqlite3"
    assert [e.body for e in stored(store)] == [body]
