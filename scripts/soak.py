"""The soak: long steady load through vipps-proxy with short tokens and periodic faults.

``python -m scripts.soak --minutes 10`` (``make soak``) starts the Vipps emulator (with
its admin app) and the proxy as two separate processes on 127.0.0.1, drives a steady mix
of calls at a bounded rate with bounded concurrency, and switches faults on and off
through the emulator's admin app. Tokens live a few seconds, so the proxy refreshes
hundreds of times under load.

The faults, repeated every cycle (``FAULT_PLAN``):

- ``token_blip``: the token endpoint drops every connection for less time than the
  proxy's backoff needs to outlast the held token; clients must not notice at all.
- ``vipps_503_burst``: the API answers 503 (passed through to clients).
- ``upstream_reset_mid_body``: the API cuts its answers short (aborted streams).
- ``upstream_stall_headers``: the API stalls past the proxy's ``read_timeout`` (504).
- ``token_outage``: the token endpoint is down for longer than a token lives (503 with
  Retry-After once the held token expires, then recovery as the backoff retries).

A failed call counts against a fault when it overlaps the fault's window (from the
switch on to the switch off plus that fault's ``grace``: the proxy's retry backoff or
the upstream's stall); every other failure is a failure outside faults, and there must
be none. At the end it prints one table, writes ``scripts/soak-results/last.json``, and
exits 1 if a failure fell outside the fault windows, memory or file descriptors grew
beyond their tolerance, or the proxy did not exit 0 on SIGTERM (2: it could not start).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

import aiohttp

from proxy.emulator import DEMO_SALES_UNIT

RESULTS: Final = Path(__file__).parent / "soak-results" / "last.json"
MIB: Final = 1 << 20
LARGE: Final = 2 * MIB
PATTERN: Final = bytes(range(256)) * (LARGE // 256)  # the emulator's download pattern
TOKEN_LIFETIME: Final = 4.0  # seconds: the proxy refreshes at half-life, every ~2 s
READ_TIMEOUT: Final = 1.5  # the proxy route's read_timeout; the stall fault outlasts it
WARMUP: Final = 5.0  # seconds of clean load before the first fault and the baselines
BASELINE_SPAN: Final = 10.0  # seconds of RSS samples each memory baseline takes
RSS_TOLERANCE_KIB: Final = 16 * 1024  # late-run median RSS may exceed the warm one by this
FD_SLACK: Final = 4  # beyond the upstream keep-alive pool, which may still be open at the end
CALL_TIMEOUT: Final = 30.0


# ---------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class FaultSpec:
    """One fault of the cycle: its switches, when it starts, how long, and its grace."""

    name: str
    switches: dict[str, Any]
    at: float  # seconds into the cycle
    duration: float
    grace: float  # seconds after the switch-off that failures still count against it
    # Start just before the proxy's next background refresh, so that the refresh (and
    # its first retry) really meet the fault while the held token is still valid.
    before_refresh: bool = False


FAULT_PLAN: Final = (
    # Switched on 0.1 s before a refresh is due, for 0.7 s: the refresh and its first
    # retry (+0.25..0.5 s) fail, the second (+0.75..1.5 s) succeeds, all within the 1.6 s
    # the held token has left. Clients must not notice anything.
    FaultSpec(
        "token_blip", {"token": "down"}, at=0.0, duration=0.7, grace=2.0, before_refresh=True
    ),
    FaultSpec("vipps_503_burst", {"api": "error503"}, at=8.0, duration=1.5, grace=1.0),
    FaultSpec(
        "upstream_reset_mid_body", {"api": "reset_mid_body"}, at=14.0, duration=1.5, grace=1.0
    ),
    FaultSpec(
        "upstream_stall_headers",
        {"api": "stall_headers", "api_delay": READ_TIMEOUT + 1.0},
        at=20.0,
        duration=1.5,
        grace=READ_TIMEOUT + 1.0,
    ),
    # Longer than a token lives. At most five attempts fail in 6 s, so the next one
    # comes at most 8 s after the switch-off (backoff 0.5 * 2**4, jittered 4..8 s).
    FaultSpec("token_outage", {"token": "down"}, at=28.0, duration=6.0, grace=10.0),
)
# The token_blip's window ends by ~6.6 s (it waits up to ~4 s for a refresh); the
# token_outage's by 44 s; the rest of the cycle is clean.
CYCLE: Final = 50.0


@dataclass
class FaultWindow:
    name: str
    start: float  # monotonic
    end: float  # monotonic, switch-off; grace added when judging calls
    grace: float
    wall_start: float  # time.time(), to find the window's events in the logs
    wall_end: float

    def covers(self, start: float, end: float) -> bool:
        return start <= self.end + self.grace and end >= self.start


# ---------------------------------------------------------------------------- calls


@dataclass
class CallResult:
    kind: str
    start: float
    end: float
    ok: bool
    status: int = 0
    problem: str = ""  # why it failed: unexpected status, transport error, bad body


class Load:
    """The mixed workload; each call checks its own answer in full."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.created: list[tuple[str, str, bytes]] = []  # reference, key, the 201 body
        self.kinds: list[tuple[str, Callable[[], Any]]] = [
            ("get_payment", self.get_payment),
            ("create_payment", self.create_payment),
            ("create_replay", self.create_replay),
            ("echo_small", self.echo_small),
            ("download_2mib", self.download),
            ("upload_2mib", self.upload),
        ]
        self.weights = [40, 30, 5, 15, 5, 5]

    def pick(self) -> tuple[str, Callable[[], Any]]:
        return random.choices(self.kinds, self.weights)[0]  # noqa: S311 - load mix, not crypto

    async def get_payment(self) -> int:
        if not self.created:
            return await self.echo_small()
        reference = random.choice(self.created)[0]  # noqa: S311
        async with self.session.get(f"{self.base}/epayment/v1/payments/{reference}") as r:
            body = await r.json(content_type=None)
            expect(r.status == 200 and body.get("reference") == reference, r.status, "get")
            return r.status

    async def create_payment(self) -> int:
        reference = f"soak-{secrets.token_hex(8)}"
        key = secrets.token_hex(12)
        status, body = await self._create(reference, key)
        expect(status == 201, status, "create")
        if len(self.created) < 10_000:
            self.created.append((reference, key, body))
        return status

    async def create_replay(self) -> int:
        """The same create again with its Idempotency-Key: Vipps answers it identically."""
        if not self.created:
            return await self.create_payment()
        reference, key, first = random.choice(self.created)  # noqa: S311
        status, body = await self._create(reference, key)
        expect(status == 201 and body == first, status, "replay differs")
        return status

    async def _create(self, reference: str, key: str) -> tuple[int, bytes]:
        payload = {
            "amount": {"currency": "NOK", "value": random.randint(100, 100_000)},  # noqa: S311
            "paymentMethod": {"type": "WALLET"},
            "reference": reference,
            "userFlow": "WEB_REDIRECT",
            "returnUrl": "https://example.com/return",
            "paymentDescription": "soak",
        }
        headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
        url = f"{self.base}/epayment/v1/payments"
        async with self.session.post(url, data=json.dumps(payload), headers=headers) as r:
            return r.status, await r.read()

    async def echo_small(self) -> int:
        data = os.urandom(512)
        async with self.session.post(f"{self.base}/echo/soak?n=1", data=data) as r:
            body = await r.json(content_type=None)
            good = body.get("body_sha256") == hashlib.sha256(data).hexdigest()
            expect(r.status == 200 and good, r.status, "echo")
            return r.status

    async def download(self) -> int:
        async with self.session.get(f"{self.base}/download/{LARGE}") as r:
            body = await r.read()
            expect(r.status == 200 and body == PATTERN, r.status, "download")
            return r.status

    async def upload(self) -> int:
        chunk = os.urandom(64 * 1024)
        count = LARGE // len(chunk)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(count):
                yield chunk

        headers = {"Content-Length": str(LARGE)}
        async with self.session.put(f"{self.base}/echo/up", data=chunks(), headers=headers) as r:
            body = await r.json(content_type=None)
            expect(r.status == 200 and body.get("body_length") == LARGE, r.status, "upload")
            return r.status


class Unexpected(Exception):
    def __init__(self, status: int, what: str) -> None:
        super().__init__(f"{what}: status {status}")
        self.status = status


def expect(good: bool, status: int, what: str) -> None:
    if not good:
        raise Unexpected(status, what)


async def one_call(load: Load, results: list[CallResult]) -> None:
    kind, run = load.pick()
    start = time.monotonic()
    try:
        status = await asyncio.wait_for(run(), CALL_TIMEOUT)
        results.append(CallResult(kind, start, time.monotonic(), True, status))
    except Unexpected as exc:
        results.append(CallResult(kind, start, time.monotonic(), False, exc.status, str(exc)))
    except Exception as exc:  # any other failure is the call's, never the run's
        problem = f"{kind}: {exc.__class__.__name__}"
        results.append(CallResult(kind, start, time.monotonic(), False, 0, problem))


async def drive(
    base: str, rate: float, concurrency: int, until: float, results: list[CallResult]
) -> None:
    """``rate`` calls a second at most, ``concurrency`` at a time at most, until ``until``."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        load = Load(session, base)
        slots = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()
        interval = 1.0 / rate
        next_at = time.monotonic()
        while (now := time.monotonic()) < until:
            if now < next_at:
                await asyncio.sleep(next_at - now)
            await slots.acquire()
            next_at = max(next_at + interval, time.monotonic())  # late: never catch up in a burst
            task = asyncio.create_task(one_call(load, results))
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: slots.release())
            tasks.add(task)
        await asyncio.gather(*tasks)


# ---------------------------------------------------------------------------- processes


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Process:
    """A child process with its output in a file, stopped with SIGTERM."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        self.popen = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return int(self.popen.returncode)

    def lines(self) -> Iterator[dict[str, Any]]:
        with self.log_path.open("rb") as log:
            for raw in log:
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(line, dict):
                    yield line


def wall_time(line: dict[str, Any]) -> float:
    """A log line's ISO 8601 UTC timestamp as seconds since the epoch."""
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def wait_http(url: str, process: Process, seconds: float = 20.0) -> None:
    """Until ``url`` answers 200; RuntimeError with the process's log tail if it never does."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        for _ in range(int(seconds / 0.1) + 1):
            if process.popen.poll() is not None:
                break
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    tail = process.log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{process.name}: {url} never answered 200; its log ends:\n{tail}")


def proxy_config(path: Path, proxy_port: int, emulator_port: int) -> Path:
    unit = DEMO_SALES_UNIT
    path.write_text(
        f"""[server]
host = "127.0.0.1"
port = {proxy_port}
shutdown_timeout = 5

[log]
level = "info"
format = "json"

[credentials.main]
token_url = "http://127.0.0.1:{emulator_port}/accesstoken/get"
client_id = "{unit.client_id}"
client_secret = "{unit.client_secret}"
subscription_key = "{unit.subscription_key}"
merchant_serial_number = "{unit.merchant_serial_number}"
token_timeout = 2

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:{emulator_port}"
connect_timeout = 2
read_timeout = {READ_TIMEOUT}
"""
    )
    return path


# ---------------------------------------------------------------------------- the run


@dataclass
class Samples:
    """RSS (KiB) and fd counts of the proxy, sampled once a second."""

    times: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    def median_rss(self, start: float, end: float) -> int:
        chosen = [r for t, r in zip(self.times, self.rss, strict=True) if start <= t <= end]
        return int(statistics.median(chosen)) if chosen else 0


async def sample(pid: int, until: float, samples: Samples) -> None:
    while time.monotonic() < until:
        samples.times.append(time.monotonic())
        samples.rss.append(rss_kib(pid))
        samples.fds.append(open_fds(pid))
        await asyncio.sleep(1.0)


async def inject(admin: str, begin: float, until: float, windows: list[FaultWindow]) -> None:
    """Play FAULT_PLAN every CYCLE seconds from ``begin``; no window outlasts ``until``."""
    async with aiohttp.ClientSession() as session:
        cycle_start = begin
        while cycle_start < until:
            for spec in FAULT_PLAN:
                at = cycle_start + spec.at
                if at + spec.duration + spec.grace > until:
                    return
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                if spec.before_refresh:
                    refreshed = await next_token_request(session, admin)
                    due = refreshed + TOKEN_LIFETIME / 2 - 0.1
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                async with session.put(f"{admin}/faults", json=spec.switches) as r:
                    r.raise_for_status()
                switched_on, wall_on = time.monotonic(), time.time()
                await asyncio.sleep(spec.duration)
                async with session.delete(f"{admin}/faults") as r:
                    r.raise_for_status()
                window = FaultWindow(
                    spec.name, switched_on, time.monotonic(), spec.grace, wall_on, time.time()
                )
                windows.append(window)
            cycle_start += CYCLE


async def next_token_request(session: aiohttp.ClientSession, admin: str) -> float:
    """When the emulator next receives a token request (a refresh): a monotonic time."""

    async def count() -> int:
        async with session.get(f"{admin}/stats") as r:
            return int((await r.json())["token_requests"]["accesstoken"])

    before = await count()
    for _ in range(int(2 * TOKEN_LIFETIME / 0.02)):  # bounded: two token lifetimes
        await asyncio.sleep(0.02)
        if await count() > before:
            return time.monotonic()
    raise RuntimeError("the proxy stopped refreshing its token")


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return await r.text()


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? ([0-9.e+-]+)$", line)
        if match is None or match[1] != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if labels.items() <= have.items():
            total += float(match[3])
    return total


def metric_by(text: str, name: str, label: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            value = re.search(rf'{label}="([^"]*)"', line)
            if value:
                found[value[1]] = found.get(value[1], 0.0) + float(line.rsplit(" ", 1)[1])
    return found


@dataclass
class Figures:
    minutes: float
    rate_per_s: float
    concurrency: int
    token_lifetime_s: float
    calls_made: int = 0
    calls_ok: int = 0
    calls_by_kind: dict[str, int] = field(default_factory=dict)
    failed_in_fault_windows: dict[str, int] = field(default_factory=dict)
    # Seconds from a fault's switch-off to the end of the last call that failed in it.
    last_failure_after_switch_off_s: dict[str, float] = field(default_factory=dict)
    failed_outside_faults: int = 0
    failures_outside_sample: list[str] = field(default_factory=list)
    fault_windows: dict[str, int] = field(default_factory=dict)
    token_refreshes_logged: int = 0
    token_fetches_ok_metric: float = 0.0
    token_fetches_error_metric: float = 0.0
    token_refresh_failed_logged: int = 0
    token_refresh_failed_holding_valid_token: int = 0  # failures no client could notice
    token_faults_injected: int = 0  # token requests the emulator failed on purpose
    token_blips_that_failed_a_refresh: int = 0  # each blip should meet one
    token_refresh_errors: dict[str, int] = field(default_factory=dict)
    requests_by_status_metric: dict[str, float] = field(default_factory=dict)
    upstream_errors_by_kind_metric: dict[str, float] = field(default_factory=dict)
    latency_ms_p50: float = 0.0
    latency_ms_p99: float = 0.0
    rss_kib_start: int = 0
    rss_kib_warm: int = 0
    rss_kib_late: int = 0
    rss_kib_peak: int = 0
    rss_kib_final: int = 0
    rss_tolerance_kib: int = RSS_TOLERANCE_KIB
    fds_start: int = 0
    fds_peak: int = 0
    fds_end: int = 0
    fds_tolerance: int = 0
    proxy_exit_code: int = -1
    verdict: list[str] = field(default_factory=list)
    passed: bool = False


def judge(results: list[CallResult], windows: list[FaultWindow], figures: Figures) -> None:
    figures.calls_made = len(results)
    figures.calls_ok = sum(r.ok for r in results)
    figures.calls_by_kind = dict(Counter(r.kind for r in results))
    figures.fault_windows = dict(Counter(w.name for w in windows))
    inside: Counter[str] = Counter()
    lag: dict[str, float] = {spec.name: 0.0 for spec in FAULT_PLAN}
    outside: list[CallResult] = []
    for result in results:
        if result.ok:
            continue
        covering = [w for w in windows if w.covers(result.start, result.end)]
        window = max(covering, key=lambda w: w.start, default=None)  # the latest fault
        if window is None:
            outside.append(result)
        else:
            inside[window.name] += 1
            lag[window.name] = max(lag[window.name], round(result.end - window.end, 2))
    figures.failed_in_fault_windows = {spec.name: inside[spec.name] for spec in FAULT_PLAN}
    figures.last_failure_after_switch_off_s = lag
    figures.failed_outside_faults = len(outside)
    figures.failures_outside_sample = [
        f"t+{r.start - results[0].start:.1f}s {r.problem}" for r in outside[:20]
    ]
    durations = sorted((r.end - r.start) * 1000 for r in results if r.ok)
    if durations:
        figures.latency_ms_p50 = round(durations[len(durations) // 2], 1)
        figures.latency_ms_p99 = round(durations[int(len(durations) * 0.99)], 1)


def verdict(figures: Figures) -> None:
    problems = []
    if figures.calls_made == 0:
        problems.append("no calls were made")
    if figures.failed_outside_faults:
        problems.append(f"{figures.failed_outside_faults} calls failed outside fault windows")
    growth = figures.rss_kib_late - figures.rss_kib_warm
    if growth > figures.rss_tolerance_kib:
        problems.append(f"RSS grew {growth} KiB under load (> {figures.rss_tolerance_kib})")
    if figures.fds_end - figures.fds_start > figures.fds_tolerance:
        problems.append(
            f"fds grew from {figures.fds_start} to {figures.fds_end} (> +{figures.fds_tolerance})"
        )
    if figures.proxy_exit_code != 0:
        problems.append(f"the proxy exited {figures.proxy_exit_code} on SIGTERM")
    figures.verdict = problems or ["pass"]
    figures.passed = not problems


def table(figures: Figures) -> str:
    f = figures
    rows = [
        ("duration", f"{f.minutes} min at <= {f.rate_per_s}/s, <= {f.concurrency} at a time"),
        ("token lifetime", f"{f.token_lifetime_s} s"),
        ("calls made", f"{f.calls_made} ({f.calls_ok} ok)"),
        ("calls by kind", ", ".join(f"{k} {v}" for k, v in sorted(f.calls_by_kind.items()))),
        *(
            (
                f"fault {name}",
                f"x{f.fault_windows.get(name, 0)}: {count} calls failed in its windows, "
                f"the last +{f.last_failure_after_switch_off_s[name]} s after switch-off",
            )
            for name, count in f.failed_in_fault_windows.items()
        ),
        ("failed outside faults", f"{f.failed_outside_faults} (must be 0)"),
        (
            "token refreshes",
            f"{f.token_refreshes_logged} token_fetched lines; metric ok "
            f"{f.token_fetches_ok_metric:.0f}, error {f.token_fetches_error_metric:.0f}",
        ),
        (
            "refresh failures logged",
            f"{f.token_refresh_failed_logged}, of which "
            f"{f.token_refresh_failed_holding_valid_token} while a valid token was held; "
            f"the emulator failed {f.token_faults_injected} token requests on purpose",
        ),
        *((f"  refresh error x{n}", error[:90]) for error, n in f.token_refresh_errors.items()),
        (
            "token blips",
            f"{f.token_blips_that_failed_a_refresh} of {f.fault_windows.get('token_blip', 0)} "
            "failed a background refresh while the token was valid",
        ),
        ("latency ok calls", f"p50 {f.latency_ms_p50} ms, p99 {f.latency_ms_p99} ms"),
        (
            "proxy RSS (KiB)",
            f"start {f.rss_kib_start}, warm {f.rss_kib_warm}, late {f.rss_kib_late}, "
            f"peak {f.rss_kib_peak}, final {f.rss_kib_final} "
            f"(late-warm <= {f.rss_tolerance_kib})",
        ),
        (
            "proxy open fds",
            f"start {f.fds_start}, peak {f.fds_peak}, end {f.fds_end} "
            f"(end-start <= {f.fds_tolerance})",
        ),
        ("proxy exit on SIGTERM", str(f.proxy_exit_code)),
        ("verdict", "; ".join(f.verdict)),
    ]
    width = max(len(name) for name, _ in rows)
    rule = "-" * (width + 2 + max(len(value) for _, value in rows))
    lines = [rule, *(f"{name.ljust(width)}  {value}" for name, value in rows), rule]
    return "\n".join(lines)


@asynccontextmanager
async def processes(workdir: Path) -> AsyncIterator[tuple[Process, Process, int, int]]:
    """The emulator, then (once it answers) the proxy; yields them, the admin and proxy ports."""
    emulator_port, admin_port, proxy_port = free_ports(3)
    emulator = Process(
        "emulator",
        [
            *("-m", "proxy", "emulator", "--host", "127.0.0.1"),
            *("--port", str(emulator_port), "--admin-port", str(admin_port)),
            *("--token-lifetime", str(TOKEN_LIFETIME)),
        ],
        workdir / "emulator.log",
    )
    started = [emulator]
    try:
        await wait_http(f"http://127.0.0.1:{admin_port}/faults", emulator)
        config = proxy_config(workdir / "proxy.toml", proxy_port, emulator_port)
        proxy = Process("proxy", ["-m", "proxy", "--config", str(config)], workdir / "proxy.log")
        started.append(proxy)
        await wait_http(f"http://127.0.0.1:{proxy_port}/-/ready", proxy)
        yield emulator, proxy, admin_port, proxy_port
    finally:
        for process in reversed(started):
            process.stop()


async def soak(args: argparse.Namespace, workdir: Path) -> Figures:
    figures = Figures(args.minutes, args.rate, args.concurrency, TOKEN_LIFETIME)
    figures.fds_tolerance = args.concurrency + 1 + FD_SLACK  # upstream pool + token conn
    async with processes(workdir) as (emulator, proxy, admin_port, proxy_port):
        base = f"http://127.0.0.1:{proxy_port}"
        admin = f"http://127.0.0.1:{admin_port}"
        figures.rss_kib_start = rss_kib(proxy.pid)
        figures.fds_start = open_fds(proxy.pid)

        begin = time.monotonic()
        until = begin + args.minutes * 60
        results: list[CallResult] = []
        windows: list[FaultWindow] = []
        samples = Samples()
        print(f"soak: {args.minutes} min, logs in {workdir}", flush=True)
        await asyncio.gather(
            drive(base, args.rate, args.concurrency, until, results),
            inject(admin, begin + WARMUP, until - 5.0, windows),
            sample(proxy.pid, until, samples),
        )
        metrics = await scrape(f"{base}/-/metrics")
        await asyncio.sleep(1.0)  # let closed client connections go
        figures.rss_kib_final = rss_kib(proxy.pid)
        figures.fds_end = open_fds(proxy.pid)
        figures.rss_kib_peak = max([*samples.rss, figures.rss_kib_final])
        figures.fds_peak = max([*samples.fds, figures.fds_end])
        warm_from = begin + WARMUP
        figures.rss_kib_warm = samples.median_rss(warm_from, warm_from + BASELINE_SPAN)
        figures.rss_kib_late = samples.median_rss(until - BASELINE_SPAN, until)
        figures.proxy_exit_code = proxy.stop()
        emulator.stop()

    lines = list(proxy.lines())
    figures.token_refreshes_logged = sum(1 for line in lines if line["event"] == "token_fetched")
    failed = [line for line in lines if line["event"] == "token_refresh_failed"]
    figures.token_refresh_errors = dict(Counter(str(line.get("error")) for line in failed))
    token_faults = [
        wall_time(line)
        for line in emulator.lines()
        if line.get("event") == "emulator_fault_injected" and line.get("path") == "/accesstoken/get"
    ]
    figures.token_faults_injected = len(token_faults)
    blips = [w for w in windows if w.name == "token_blip"]
    figures.token_blips_that_failed_a_refresh = sum(
        any(w.wall_start <= at <= w.wall_end + 0.1 for at in token_faults) for w in blips
    )
    figures.token_refresh_failed_logged = len(failed)
    figures.token_refresh_failed_holding_valid_token = sum(
        1 for line in failed if line.get("holding_valid_token")
    )
    figures.token_fetches_ok_metric = metric_sum(
        metrics, "vipps_proxy_token_fetches_total", result="ok"
    )
    figures.token_fetches_error_metric = metric_sum(
        metrics, "vipps_proxy_token_fetches_total", result="error"
    )
    figures.requests_by_status_metric = metric_by(metrics, "vipps_proxy_requests_total", "status")
    figures.upstream_errors_by_kind_metric = metric_by(
        metrics, "vipps_proxy_upstream_errors_total", "kind"
    )
    judge(results, windows, figures)
    verdict(figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--rate", type=float, default=40.0, help="calls a second at most")
    parser.add_argument("--concurrency", type=int, default=8, help="calls at a time at most")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this directory")
    args = parser.parse_args(argv)
    if args.minutes < 1 or args.rate <= 0 or args.concurrency < 1:
        parser.error("--minutes must be 1 or more, --rate and --concurrency above 0")
    with tempfile.TemporaryDirectory(prefix="vipps-soak-") as tmp:
        workdir = args.logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            figures = asyncio.run(soak(args, workdir))
        except RuntimeError as exc:
            print(f"soak: aborted: {exc}", file=sys.stderr)
            return 2
    print(table(figures))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(asdict(figures), indent=2) + "\n")
    print(f"results: {args.results}")
    return 0 if figures.passed else 1


if __name__ == "__main__":
    sys.exit(main())
