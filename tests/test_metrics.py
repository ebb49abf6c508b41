"""Metrics as Prometheus scrapes them: the per-call families kept as plain numbers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from proxy.groupmetrics import MetricsGroup
from proxy.metrics import Metrics

from .conftest import RunningEmulator, free_port
from .processes import ProxyProcess, write_config


def scrape(metrics: Metrics) -> list[str]:
    return metrics.render().decode().splitlines()


def test_calls_are_counted_by_route_method_and_status() -> None:
    """Each call counts once under its labels; a client's odd method is folded to OTHER."""
    metrics = Metrics()
    for method, status in [("GET", 200), ("GET", 200), ("POST", 502), ("BREW", 405)]:
        metrics.observe_call("/epayment/", method, status, 0.01, 0, 0)
    lines = scrape(metrics)
    assert 'vipps_proxy_requests_total{method="GET",route="/epayment/",status="200"} 2.0' in lines
    assert 'vipps_proxy_requests_total{method="POST",route="/epayment/",status="502"} 1.0' in lines
    assert 'vipps_proxy_requests_total{method="OTHER",route="/epayment/",status="405"} 1.0' in lines


def test_durations_render_as_a_cumulative_histogram() -> None:
    """Buckets are cumulative, a value on a bound counts in that bound, +Inf counts all."""
    metrics = Metrics()
    for seconds in (0.005, 0.007, 0.3, 120.0):
        metrics.observe_call("/", "GET", 200, seconds, 0, 0)
    lines = scrape(metrics)
    name = "vipps_proxy_request_duration_seconds"
    assert f'{name}_bucket{{le="0.005",route="/"}} 1.0' in lines
    assert f'{name}_bucket{{le="0.01",route="/"}} 2.0' in lines
    assert f'{name}_bucket{{le="0.25",route="/"}} 2.0' in lines
    assert f'{name}_bucket{{le="0.5",route="/"}} 3.0' in lines
    assert f'{name}_bucket{{le="60.0",route="/"}} 3.0' in lines
    assert f'{name}_bucket{{le="+Inf",route="/"}} 4.0' in lines
    assert f'{name}_count{{route="/"}} 4.0' in lines
    (total,) = [line for line in lines if line.startswith(f'{name}_sum{{route="/"}}')]
    assert abs(float(total.rsplit(" ", 1)[1]) - 120.312) < 1e-9


def test_body_bytes_are_summed_per_route() -> None:
    """Request and response body bytes add up per route."""
    metrics = Metrics()
    metrics.observe_call("/a/", "POST", 200, 0.01, 100, 20)
    metrics.observe_call("/a/", "POST", 200, 0.01, 5, 0)
    metrics.observe_call("/b/", "GET", 200, 0.01, 0, 7)
    lines = scrape(metrics)
    assert 'vipps_proxy_request_bytes_total{route="/a/"} 105.0' in lines
    assert 'vipps_proxy_response_bytes_total{route="/a/"} 20.0' in lines
    assert 'vipps_proxy_response_bytes_total{route="/b/"} 7.0' in lines


def test_in_flight_reads_the_live_count_at_scrape_time() -> None:
    """The in-flight gauge shows the count as it is when scraped."""
    metrics = Metrics()
    metrics.active += 3
    assert "vipps_proxy_in_flight_requests 3.0" in scrape(metrics)
    metrics.active -= 3
    assert "vipps_proxy_in_flight_requests 0.0" in scrape(metrics)


def test_a_group_scrape_sums_every_workers_snapshot(tmp_path: Path) -> None:
    """Two workers' metrics through the run's folder: either one's scrape shows both."""
    first, second = Metrics(), Metrics()
    first.group, second.group = MetricsGroup(tmp_path, 1), MetricsGroup(tmp_path, 2)
    for _ in range(3):
        first.observe_call("/", "GET", 200, 0.01, 5, 7)
    for _ in range(2):
        second.observe_call("/", "GET", 200, 0.3, 1, 1)
    second.upstream_errors.labels("/", "read_timeout").inc()
    second.group.write(second.families())
    lines = scrape(first)
    assert 'vipps_proxy_requests_total{method="GET",route="/",status="200"} 5.0' in lines
    assert 'vipps_proxy_request_duration_seconds_bucket{le="0.01",route="/"} 3.0' in lines
    assert 'vipps_proxy_request_duration_seconds_count{route="/"} 5.0' in lines
    assert 'vipps_proxy_request_bytes_total{route="/"} 17.0' in lines
    assert 'vipps_proxy_upstream_errors_total{kind="read_timeout",route="/"} 1.0' in lines


async def test_workers_2_one_scrape_counts_every_call(
    emulator: RunningEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """workers = 2: N calls spread over both workers; one scrape counts N; the run's
    metrics folder is gone after exit."""
    run_tmp = tmp_path / "run-tmp"
    run_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(run_tmp))
    port = free_port()
    config = write_config(
        tmp_path / "w.toml", str(emulator.token_url), str(emulator.url), port, workers=2
    )
    process = await asyncio.to_thread(ProxyProcess, config, port, tmp_path / "w.log")
    calls = 20
    try:
        for i in range(calls):  # a connection each, so the kernel spreads them over both
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as c,
                c.get(process.url(f"/echo/{i}")) as response,
            ):
                assert response.status == 200
        counted = (0.0, 0.0)
        async with aiohttp.ClientSession() as client:
            for _ in range(100):  # a bounded wait: siblings share their counts each second
                async with client.get(process.url("/-/metrics")) as response:
                    counted = requests_counted(await response.text())
                if counted == (calls, calls):
                    break
                await asyncio.sleep(0.1)
        assert counted == (calls, calls)
        assert await asyncio.to_thread(process.terminate) == 0
        assert list(run_tmp.iterdir()) == []
    finally:
        process.close()


def requests_counted(text: str) -> tuple[float, float]:
    """The scrape's count of calls on route / and its duration histogram's count."""
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("vipps_proxy_requests_total{") and 'route="/"' in line:
            total += float(line.rsplit(" ", 1)[1])
        if line.startswith('vipps_proxy_request_duration_seconds_count{route="/"}'):
            count = float(line.rsplit(" ", 1)[1])
    return total, count
