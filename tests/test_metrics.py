"""Metrics as Prometheus scrapes them: the per-call families kept as plain numbers."""

from __future__ import annotations

from proxy.metrics import Metrics


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
