"""One benchmark run: find the tools, start the servers, measure, print, save."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bench import machine, procs, report
from bench.plan import FULL, QUICK
from bench.scenarios import Bench, Subject, say
from bench.servers import REPO, Fleet, Server, http_status
from bench.stream import Streamer, make_body
from bench.tools import ensure_tools
from bench.wrk import PATH
from proxy.emulator import DEMO_SALES_UNITS

BUSY_WARNING_PERCENT: Final = 15.0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument(
        "--profile",
        type=float,
        metavar="SECONDS",
        help="instead: profile vipps-proxy under saturation with py-spy for SECONDS",
    )
    parser.add_argument("--method", choices=("GET", "POST"), default="GET", help="for --profile")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument(
        "--proxy-source",
        type=Path,
        default=REPO,
        metavar="DIR",
        help="run vipps-proxy from another checkout (e.g. a git worktree of an older commit)",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    tools = ensure_tools()
    split = machine.cpu_split()
    background = _background_load()
    workdir = Path(tempfile.mkdtemp(prefix="vipps-bench-", dir=_scratch()))
    say(f"work folder {workdir}; {split.describe()}")
    try:
        with Fleet(tools, split, workdir, args.proxy_source.resolve()) as fleet:
            if args.profile:
                from bench.profile import profile

                return profile(fleet, tools, split, args.profile, args.method)
            results = _measure(Bench(plan, tools, split, fleet, workdir), tools, split)
            results["machine"]["background_cpu_percent"] = background
            results["proxy_source"] = _describe_source(args.proxy_source.resolve())
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return _report(results)


def _describe_source(source: Path) -> str:
    """The commit vipps-proxy ran from, ``+dirty`` when its proxy/ had changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--", "proxy"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return str(source)
    return head + ("+dirty" if dirty else "")


def _background_load() -> float:
    """How busy the machine is before we start, in % of one CPU: others' work skews us."""
    busy_before, _ = procs.machine_cpu()
    time.sleep(1.0)
    percent = round(100 * (procs.machine_cpu()[0] - busy_before), 1)
    if percent > BUSY_WARNING_PERCENT:
        say(f"warning: the machine is already {percent:.0f}% busy: numbers will be low")
    return percent


def _scratch() -> str | None:
    """tmpfs where there is one: uploads and logs then never wait for a disk."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 3 << 30 else None


def _measure(bench: Bench, tools: Any, split: machine.CpuSplit) -> dict[str, Any]:
    started = datetime.now(UTC)
    t0 = time.monotonic()
    fleet, plan = bench.fleet, bench.plan
    www = bench.workdir / "www"
    body = make_body(www, plan.stream_bytes)
    upstream = fleet.upstream(www)
    emulator = fleet.emulator("emulator", 3600.0)
    token = _fetch_token(emulator)
    hello = fleet.hello()
    nginx_proxy = fleet.nginx_proxy(upstream, token)
    w1 = fleet.vipps_proxy("vipps-proxy-w1", emulator, upstream, workers=1)
    w2 = fleet.vipps_proxy("vipps-proxy-w2", emulator, upstream, workers=2)
    for server in (upstream, hello, nginx_proxy, w1, w2):
        _check(server)
    subjects = [
        Subject(report.BARE, hello, split.load),
        Subject(report.NGINX, nginx_proxy, split.load),
        Subject(report.W1, w1, split.load),
        Subject(report.W2, w2, split.shared),
    ]
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "plan": plan.__dict__,
        "machine": machine.describe(tools, split),
    }
    results["saturation"] = bench.saturation(subjects)
    fleet.stop(w2)
    fleet.stop(hello)
    results["latency"] = bench.latency(upstream, [subjects[2], subjects[1]])
    streamer = Streamer(tools, split, body, www)
    results["streaming"] = bench.streaming(streamer, [subjects[1], subjects[2]])
    fleet.stop(nginx_proxy)
    fleet.stop(w1)
    results["refresh"] = bench.refresh(upstream)
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    return results


def _fetch_token(emulator: Server) -> str:
    """A real emulator token, so nginx injects a header of the same size as ours."""
    unit = DEMO_SALES_UNITS[0]
    request = urllib.request.Request(  # noqa: S310 - loopback
        emulator.url + "/accesstoken/get",
        method="POST",
        data=b"",
        headers={
            "client_id": unit.client_id,
            "client_secret": unit.client_secret,
            "Ocp-Apim-Subscription-Key": unit.subscription_key,
        },
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as response:
        return str(json.loads(response.read())["access_token"])


def _check(server: Server) -> None:
    """Every subject answers GET and POST with 200 before it is measured."""
    for method, data in (("GET", None), ("POST", b"{}")):
        status = http_status(server.url + PATH, method, data)
        if status != 200:
            raise SystemExit(f"bench: {server.name} answered {method} with {status}")


def _report(results: dict[str, Any]) -> int:
    built = report.Report(results)
    table = built.build()
    results["targets"] = [t.as_dict() for t in built.targets]
    results["table"] = table
    stamp = results["started"].replace(":", "").replace("-", "").replace("+0000", "Z")
    path = report.write(results, stamp)
    print()
    print(report.heading(results))
    print()
    print(table)
    print()
    met = sum(t.met for t in built.targets)
    print(f"targets met: {met} of {len(built.targets)}; elapsed {results['elapsed_s']} s")
    print(f"results: {path}")
    return 0
