"""The metrics a dashboard is built from: build, token expiry, upstream time, process.

Each is scraped from a real proxy in front of the emulator or an aiohttp upstream on
loopback, or (for the group of workers) from real ``Metrics`` sharing a folder.
"""

from __future__ import annotations

import asyncio
import platform
import time
from importlib import metadata
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.groupmetrics import MetricsGroup
from proxy.metrics import Metrics
from tests.conftest import (
    EmulatorFactory,
    ProxyFactory,
    RunningEmulator,
    all_secrets,
    free_port,
    make_config,
)
from tests.processes import ProxyProcess, write_config

PROCESS_METRICS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
)


async def scrape(url: str) -> dict[str, float]:
    """Each sample line of a scrape, ``name{labels}`` to its value."""
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        assert response.status == 200
        text = await response.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def render(metrics: Metrics) -> dict[str, float]:
    samples = {}
    for line in metrics.render().decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def test_build_info_names_the_version_python_and_aiohttp(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """``vipps_proxy_build_info`` is 1, labelled with the installed version, Python's
    and aiohttp's."""
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    samples = await scrape(proxy.at("/-/metrics"))
    labels = (
        f'aiohttp="{aiohttp.__version__}",python="{platform.python_version()}",'
        f'version="{metadata.version("vipps-proxy")}"'
    )
    assert samples[f"vipps_proxy_build_info{{{labels}}}"] == 1.0


async def expiry_shown(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory, lifetime: float
) -> tuple[float, float, float]:
    """A call through a proxy whose tokens last ``lifetime``: the wall clock before it,
    the token expiry the metrics show after it, and the wall clock after it."""
    emulator = await start_emulator(token_lifetime=lifetime)
    before = time.time()
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    async with aiohttp.ClientSession() as client, client.get(proxy.at("/echo/x")) as response:
        assert response.status == 200
    after = time.time()
    expiry = (await scrape(proxy.at("/-/metrics")))[
        'vipps_proxy_token_expiry_timestamp_seconds{credentials="main"}'
    ]
    return before, expiry, after


async def test_token_expiry_is_the_held_tokens_wall_clock_expiry(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory
) -> None:
    """With a token of 600 s held, ``vipps_proxy_token_expiry_timestamp_seconds`` is a
    Unix time about 600 s after the fetch (taken up to 5 s early), per credential set."""
    before, expiry, after = await expiry_shown(start_emulator, start_proxy, 600.0)
    assert before + 600 - 5 - 1 <= expiry <= after + 600 + 1


@pytest.mark.parametrize(
    ("lifetime", "held"),
    [(2 * 86400.0, 2 * 86400.0), (30 * 86400.0, 7 * 86400.0)],
    ids=["two days, whole", "thirty days, cut to seven"],
)
async def test_a_token_lifetime_is_trusted_up_to_seven_days(
    start_emulator: EmulatorFactory, start_proxy: ProxyFactory, lifetime: float, held: float
) -> None:
    """Longer than Vipps' 24 hours is believed up to a week (a 401 still refreshes);
    past it the token is held a week, as ``..._token_expiry_timestamp_seconds`` shows."""
    before, expiry, after = await expiry_shown(start_emulator, start_proxy, lifetime)
    assert before + held - 5 - 1 <= expiry <= after + held + 1


async def test_no_token_held_shows_no_expiry(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """While the token endpoint fails, no expiry is shown for the set (an absent series
    is what an alert on 'expires within N minutes' must also catch)."""
    emulator.state.faults.token = "error500"
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    async with aiohttp.ClientSession() as client, client.get(proxy.at("/echo/x")) as response:
        assert response.status == 503
    samples = await scrape(proxy.at("/-/metrics"))
    assert not [name for name in samples if "token_expiry" in name]


async def test_upstream_duration_ends_at_the_answer_head_not_its_body(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """An upstream that sends its head and holds its body until the client has seen
    the head and 0.5 s more: the upstream histogram counts the call under its route
    and credential set, and its time is at least 0.5 s below the call's total."""
    body_may_go = asyncio.Event()

    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await body_may_go.wait()
        await response.write(b"the body")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/slow", slow_body)
    upstream = TestServer(app, host="127.0.0.1")
    await upstream.start_server()
    try:
        config = make_config(emulator.token_url, upstream.make_url(""))
        proxy = await start_proxy(config)
        async with aiohttp.ClientSession() as client, client.get(proxy.at("/slow")) as response:
            assert response.status == 200  # the head is here: the body is still held
            await asyncio.sleep(0.5)  # the gap the histograms must tell apart
            body_may_go.set()
            assert await response.read() == b"the body"
        samples = await scrape(proxy.at("/-/metrics"))
    finally:
        await upstream.close()
    head = 'vipps_proxy_upstream_duration_seconds_{}{{credentials="main",route="/"}}'
    total = 'vipps_proxy_request_duration_seconds_{}{{route="/"}}'
    assert samples[head.format("count")] == 1.0
    assert samples[head.format("sum")] <= samples[total.format("sum")] - 0.5


async def test_process_metrics_are_exported_and_no_created_series(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """CPU, memory, open files and start time of the process; no ``*_created`` series
    beside the counters (a call and a token fetch have moved some)."""
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url))
    async with aiohttp.ClientSession() as client, client.get(proxy.at("/echo/x")) as response:
        assert response.status == 200
    samples = await scrape(proxy.at("/-/metrics"))
    for name in PROCESS_METRICS:
        assert samples[name] > 0, name
    assert 'vipps_proxy_token_fetches_total{credentials="main",result="ok"}' in samples
    assert [name for name in samples if "_created" in name] == []
    text = "\n".join(samples)
    for secret in all_secrets(proxy.config):
        assert secret not in text


def test_a_group_shows_each_workers_process_metrics_apart(tmp_path: Path) -> None:
    """Two workers sharing a folder: the ``process_*`` series carry each one's pid
    (never summed), the build info is 1 (not 2), and a token expiry is the earliest."""
    first, second = Metrics(), Metrics()
    first.group, second.group = MetricsGroup(tmp_path, 1), MetricsGroup(tmp_path, 2)
    first.watch_tokens(lambda: [("main", 600.0)])
    second.watch_tokens(lambda: [("main", 60.0)])
    second.group.write(second.families())
    samples = render(first)
    for name in PROCESS_METRICS:
        assert {f'{name}{{pid="1"}}', f'{name}{{pid="2"}}'} <= set(samples), name
        assert name not in samples
    (build,) = [value for name, value in samples.items() if name.startswith("vipps_proxy_build")]
    assert build == 1.0
    expiry = samples['vipps_proxy_token_expiry_timestamp_seconds{credentials="main"}']
    assert expiry < time.time() + 61


async def test_workers_each_show_their_process_metrics_in_one_scrape(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """``workers = 2`` and an admin port (shared by both, as the API port is): one
    scrape there shows the start time of both workers, by pid."""
    port, admin_port = free_port(), free_port()
    config = write_config(
        tmp_path / "w.toml",
        str(emulator.token_url),
        str(emulator.url),
        port,
        workers=2,
        admin_port=admin_port,
    )
    process = await asyncio.to_thread(ProxyProcess, config, admin_port, tmp_path / "w.log")
    try:
        pids: set[str] = set()
        for _ in range(200):  # siblings share their metrics each second; bounded
            samples = await scrape(process.url("/-/metrics"))
            pids = {n for n in samples if n.startswith("process_start_time_seconds{pid=")}
            if len(pids) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(pids) == 2
        assert await asyncio.to_thread(process.terminate) == 0
    finally:
        process.close()
