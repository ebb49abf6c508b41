"""How long and how hard each measurement runs: the full run and ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class Plan:
    """Durations in seconds, rates in calls per second, sizes in bytes."""

    name: str
    warmup_s: float  # before each saturation run, not measured
    saturation_s: float  # each saturation run
    connections: int  # wrk connections at saturation
    latency_s: float  # each fixed-rate latency run
    latency_rate: int
    stream_bytes: int  # each transfer, up and down
    stream_rounds: int  # each transfer this many times; the fastest counts
    refresh_s: float  # the token refresh run
    refresh_rate: int
    token_lifetime_s: float  # the emulator's token lifetime in the refresh run


FULL = Plan(
    name="full",
    warmup_s=2.0,
    saturation_s=10.0,
    connections=64,
    latency_s=30.0,
    latency_rate=200,
    stream_bytes=1024 * MIB,
    stream_rounds=3,
    refresh_s=20.0,
    refresh_rate=500,
    token_lifetime_s=6.0,
)

QUICK = Plan(
    name="quick",
    warmup_s=1.0,
    saturation_s=3.0,
    connections=64,
    latency_s=6.0,
    latency_rate=200,
    stream_bytes=512 * MIB,
    stream_rounds=2,
    refresh_s=8.0,
    refresh_rate=500,
    token_lifetime_s=6.0,
)
