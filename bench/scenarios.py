"""The four measurements. Each returns plain data for the report and the JSON file."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import orjson

from bench import procs
from bench.machine import CpuSplit
from bench.openloop import Call
from bench.plan import Plan
from bench.servers import Fleet, Server
from bench.stream import Streamer
from bench.tools import Tools
from bench.wrk import Wrk

POST_BYTES: Final = 1024
REFRESH_WINDOW_S: Final = 0.5  # "the second around a refresh": half a second each side


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Subject:
    """A server under load, and the CPUs its load generator gets."""

    label: str
    server: Server
    load_cpus: str


@dataclass(frozen=True)
class Bench:
    plan: Plan
    tools: Tools
    split: CpuSplit
    fleet: Fleet
    workdir: Path

    @property
    def wrk(self) -> Wrk:
        return Wrk(self.tools, self.split)

    # ------------------------------------------------------------------ 1. throughput

    def saturation(self, subjects: list[Subject]) -> list[dict[str, Any]]:
        """Calls/s and CPU µs per call at saturation, GET then 1 KiB POST, per subject."""
        rows = []
        for method, body in (("GET", 0), ("POST", POST_BYTES)):
            for subject in subjects:
                rows.append(self._saturate(subject, method, body))
        return rows

    def _saturate(self, subject: Subject, method: str, body: int) -> dict[str, Any]:
        plan, base = self.plan, subject.server.url
        self.wrk.saturate(base, method, body, plan.warmup_s, plan.connections, subject.load_cpus)
        pids = subject.server.pids()
        cpu_before, (busy_before, steal_before) = procs.cpu_seconds(pids), procs.machine_cpu()
        result = self.wrk.saturate(
            base, method, body, plan.saturation_s, plan.connections, subject.load_cpus
        )
        cpu = procs.cpu_seconds(pids) - cpu_before
        busy_after, steal_after = procs.machine_cpu()
        busy, steal = busy_after - busy_before, steal_after - steal_before
        us_per_call = cpu * 1e6 / result.requests if result.requests else 0.0
        say(
            f"{method} {subject.label}: {result.rate:,.0f} calls/s, "
            f"{us_per_call:.0f} µs CPU/call, {result.failed} errors"
        )
        return {
            "method": method,
            "body_bytes": body,
            "subject": subject.label,
            "processes": len(pids),
            "cpu_s": round(cpu, 3),
            "cpu_us_per_call": round(us_per_call, 1),
            # Everything the machine did meanwhile (us, wrk, upstream, anyone else).
            "machine_busy_cpu_s": round(busy, 3),
            "machine_steal_cpu_s": round(steal, 3),
            **result.as_dict(),
        }

    # ------------------------------------------------------------------ 2. latency

    def latency(self, direct: Server, subjects: list[Subject]) -> dict[str, Any]:
        """Latency at a fixed moderate rate: direct to the upstream, then through each."""
        rate, seconds = self.plan.latency_rate, self.plan.latency_s
        out: dict[str, Any] = {"rate": rate, "seconds": seconds}
        for label, server in [("direct", direct), *((s.label, s.server) for s in subjects)]:
            pids = server.pids()
            cpu_before = procs.cpu_seconds(pids)
            result = self.wrk.fixed_rate(server.url, rate, seconds, self.split.load)
            cpu = procs.cpu_seconds(pids) - cpu_before
            ms = result.latency_ms
            say(
                f"latency {label} at {result.rate:.0f}/s: p50 {ms['p50']} p99 {ms['p99']} "
                f"p99.9 {ms['p999']} ms"
            )
            out[label] = result.as_dict()
            # At a low rate every call pays for its own wake-ups: more CPU than at saturation.
            out[label]["cpu_us_per_call"] = round(cpu * 1e6 / max(result.requests, 1), 1)
        return out

    # ------------------------------------------------------------------ 3. streaming

    def streaming(self, streamer: Streamer, subjects: list[Subject]) -> dict[str, Any]:
        """Each transfer ``stream_rounds`` times, the subjects taking turns; best rate kept.

        Other work on the machine only ever slows a transfer down, so the fastest of a
        few is the steadiest estimate of what the proxy can do; every round is kept in
        the JSON, and the peak RSS reported is the highest of all rounds.
        """
        out: dict[str, Any] = {"bytes": streamer.body.stat().st_size}
        rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(self.plan.stream_rounds):
            for direction in ("down", "up"):
                for subject in subjects:
                    result = streamer.transfer(subject.server, direction)
                    say(
                        f"stream {direction} {subject.label}: {result['mb_per_s']:,.0f} MB/s, "
                        f"peak RSS {result['peak_rss_mib']} MiB"
                    )
                    rounds.setdefault((subject.label, direction), []).append(result)
        for (label, direction), results in rounds.items():
            best = max(results, key=lambda r: r["mb_per_s"])
            out.setdefault(label, {})[direction] = {
                **best,
                "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
                "rounds": results,
            }
        return out

    # ------------------------------------------------------------------ 4. token refresh

    def refresh(self, upstream: Server) -> dict[str, Any]:
        """Open-loop calls while short-lived tokens are refreshed in the background."""
        plan = self.plan
        emulator = self.fleet.emulator("emulator-short-tokens", plan.token_lifetime_s)
        proxy = self.fleet.vipps_proxy("vipps-proxy-refresh", emulator, upstream, workers=1)
        out_file = self.workdir / "openloop.json"
        argv = [sys.executable, "-m", "bench.openloop", proxy.url]
        argv += ["--rate", str(plan.refresh_rate), "--seconds", str(plan.refresh_s)]
        argv += ["--out", str(out_file)]
        started = time.time()
        subprocess.run(
            [*self.split.prefix(self.split.load, self.tools.taskset), *argv],
            check=True,
            timeout=plan.refresh_s + 60,
            cwd=Path(__file__).resolve().parent.parent,
        )
        ended = time.time()
        self.fleet.stop(proxy)
        self.fleet.stop(emulator)
        calls: list[Call] = [tuple(c) for c in orjson.loads(out_file.read_bytes())]
        fetched = [t for t in _token_fetch_times(proxy.log) if started <= t <= ended]
        result = _refresh_summary(calls, fetched, plan)
        say(
            f"refresh: {len(fetched)} refreshes, p99 near {result['p99_near_ms']} ms, "
            f"elsewhere {result['p99_elsewhere_ms']} ms"
        )
        return result


def _token_fetch_times(log: Path) -> list[float]:
    """Wall-clock times of the proxy's ``token_fetched`` lines."""
    times = []
    for line in log.read_bytes().splitlines():
        if b"token_fetched" not in line:
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if entry.get("event") == "token_fetched" and "timestamp" in entry:
            times.append(datetime.fromisoformat(entry["timestamp"]).timestamp())
    return times


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def _refresh_summary(calls: list[Call], fetched: list[float], plan: Plan) -> dict[str, Any]:
    near: list[float] = []
    elsewhere: list[float] = []
    for sent, latency, _status in calls:
        close = any(abs(sent - t) <= REFRESH_WINDOW_S for t in fetched)
        (near if close else elsewhere).append(latency * 1000)
    return {
        "rate": plan.refresh_rate,
        "seconds": plan.refresh_s,
        "token_lifetime_s": plan.token_lifetime_s,
        "calls": len(calls),
        "failed": sum(1 for c in calls if c[2] != 200),
        "refreshes": len(fetched),
        "calls_near": len(near),
        "p50_near_ms": round(percentile(near, 50), 3),
        "p99_near_ms": round(percentile(near, 99), 3),
        "max_near_ms": round(max(near, default=0.0), 3),
        "p50_elsewhere_ms": round(percentile(elsewhere, 50), 3),
        "p99_elsewhere_ms": round(percentile(elsewhere, 99), 3),
        "max_elsewhere_ms": round(max(elsewhere, default=0.0), 3),
    }
