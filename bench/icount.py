"""``python -m bench.icount [--method POST] [--tracing] [DIR ...]``: instructions per call.

Wall-clock CPU per call on a shared machine moves by a third from run to run; an
instruction count moves by about 1 %, so it shows a change of a few percent that
``make bench`` cannot. Each vipps-proxy (this checkout, or the checkouts given, such as
git worktrees of older commits) runs under valgrind's cachegrind twice, in front of the
same nginx upstream and emulator as ``make bench``, serving ``SMALL`` and then ``LARGE``
calls (8 at a time, after a warm-up); the difference over ``LARGE - SMALL`` calls is what
one call costs in user space, start-up and shutdown excluded. Kernel work (system calls)
is not counted: it is the same for every version, and ``make bench`` shows it.

Needs valgrind (Debian package ``valgrind``); each count takes about 20 s.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

import aiohttp

from bench import machine
from bench.scenarios import POST_BYTES
from bench.servers import REPO, Fleet, Server, free_port, proxy_toml
from bench.tools import ensure_tools
from bench.wrk import PATH

SMALL: Final = 100
LARGE: Final = 600
WARM_UP: Final = 20
CONCURRENCY: Final = 8
STOP_TIMEOUT_S: Final = 120.0  # valgrind runs the proxy ~50 times slower


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.icount", description=__doc__)
    parser.add_argument("sources", nargs="*", type=Path, default=[REPO], metavar="DIR")
    parser.add_argument("--method", choices=("GET", "POST"), default="GET")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="with [tracing] on, exporting to the nginx upstream (which refuses the spans)",
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("bench.icount needs valgrind: apt-get install -y valgrind", file=sys.stderr)
        return 2
    tools, split = ensure_tools(), machine.cpu_split()
    workdir = Path(tempfile.mkdtemp(prefix="vipps-icount-"))
    try:
        with Fleet(tools, split, workdir) as fleet:
            www = workdir / "www"
            www.mkdir()
            upstream = fleet.upstream(www)
            emulator = fleet.emulator("emulator", 3600.0)
            for source in args.sources:
                small, large = (
                    _count(fleet, source.resolve(), emulator, upstream, args, calls)
                    for calls in (SMALL, LARGE)
                )
                per_call = (large - small) / (LARGE - SMALL)
                print(f"{source}: {per_call / 1000:,.1f}k instructions per {args.method}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _count(
    fleet: Fleet,
    source: Path,
    emulator: Server,
    upstream: Server,
    args: argparse.Namespace,
    calls: int,
) -> int:
    """Instructions the proxy from ``source`` ran in its whole life, serving ``calls``."""
    method = args.method
    port = free_port()
    conf = fleet.workdir / f"icount-{port}.toml"
    toml = proxy_toml(port, 1, emulator.url, upstream.url)
    if args.tracing:
        toml += f'\n[tracing]\nendpoint = "{upstream.url}/v1/traces"\n'
    conf.write_text(toml)
    out = fleet.workdir / f"cachegrind-{port}.out"
    argv = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}"]
    argv += [sys.executable, "-m", "proxy", "--config", str(conf)]
    server = fleet.start(
        f"icount-{port}", argv, fleet.split.proxy, f"http://127.0.0.1:{port}", source
    )
    fleet.wait_ready(server, "/-/ready")
    asyncio.run(_load(server.url, method, WARM_UP))
    asyncio.run(_load(server.url, method, calls))
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise
    fleet.servers.remove(server)
    for line in out.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary in {out}")


async def _load(base: str, method: str, calls: int) -> None:
    body = b'{"pad":"' + b"x" * (POST_BYTES - 10) + b'"}' if method == "POST" else None
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    limit = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one() -> None:
            async with limit, session.request(method, base + PATH, data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{method} {PATH}: {r.status}")

        await asyncio.gather(*(one() for _ in range(calls)))


if __name__ == "__main__":
    raise SystemExit(main())
