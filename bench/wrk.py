"""Load with wrk: saturation (closed loop, many connections) and a fixed moderate rate.

The fixed rate uses wrk's ``delay()`` hook: each of a few connections waits a fixed
time before each call. wrk starts a call's clock when it writes the call, after the
pause, so the pause is not counted as latency. This is not wrk2's open loop (a slow
answer postpones the next call on its connection), but at 200 calls/s on four
connections each waits 20 ms between calls, twenty times the proxy's latency, so
the schedule barely moves and a slow call cannot hide others behind it; the rate
reached is measured and reported. wrk's clock and histogram are C with microsecond
resolution, which a Python client could not match at p99.9.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.machine import CpuSplit
from bench.tools import Tools

SCRIPT: Final = Path(__file__).with_name("wrk.lua")
MARKER: Final = "BENCH_JSON "
LATENCY_CONNECTIONS: Final = 4
CALL_TIMEOUT_S: Final = 5
PATH: Final = "/epayment/v1/payments/bench-0001"


class WrkError(Exception):
    """wrk failed or printed no summary."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "calls_per_s": round(self.rate, 1),
            "errors": self.errors,
            "latency_ms": self.latency_ms,
        }


@dataclass(frozen=True)
class Wrk:
    tools: Tools
    split: CpuSplit

    def saturate(
        self, base: str, method: str, body_bytes: int, seconds: float, connections: int, cpus: str
    ) -> WrkResult:
        return self._run(base, method, body_bytes, seconds, connections, 0, cpus)

    def fixed_rate(self, base: str, rate: int, seconds: float, cpus: str) -> WrkResult:
        delay_ms = max(1, round(1000 * LATENCY_CONNECTIONS / rate))
        return self._run(base, "GET", 0, seconds, LATENCY_CONNECTIONS, delay_ms, cpus)

    def _run(
        self,
        base: str,
        method: str,
        body_bytes: int,
        seconds: float,
        connections: int,
        delay_ms: int,
        cpus: str,
    ) -> WrkResult:
        argv = [
            *self.split.prefix(cpus, self.tools.taskset),
            self.tools.wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={CALL_TIMEOUT_S}s",
            "-s",
            str(SCRIPT),
            base + PATH,
        ]
        env = {
            **os.environ,
            "BENCH_METHOD": method,
            "BENCH_BODY_BYTES": str(body_bytes),
            "BENCH_DELAY_MS": str(delay_ms),
        }
        done = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=seconds + 30, check=False
        )
        for line in done.stdout.splitlines():
            if line.startswith(MARKER):
                return _parse(json.loads(line[len(MARKER) :]))
        raise WrkError(f"wrk exited {done.returncode}: {done.stderr.strip() or done.stdout}")


def _parse(data: dict[str, Any]) -> WrkResult:
    latency = {k: round(v / 1000, 3) for k, v in data["latency_us"].items()}
    return WrkResult(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        errors={k: int(v) for k, v in data["errors"].items()},
        latency_ms=latency,
    )
