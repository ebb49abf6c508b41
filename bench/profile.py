"""``python -m bench --profile SECONDS``: where vipps-proxy's CPU goes at saturation.

Starts the upstream, the emulator and vipps-proxy (one worker, production settings),
saturates it with small GETs (``--method POST`` for 1 KiB POSTs) and records it with
py-spy (``pip install py-spy``) at 250 Hz without pausing it. Writes a speedscope file
(open it at speedscope.app) next to the results and prints the functions and modules
with the largest share of samples, self and inclusive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from bench import report
from bench.machine import CpuSplit
from bench.scenarios import POST_BYTES, say
from bench.servers import Fleet
from bench.tools import Tools
from bench.wrk import Wrk

RATE_HZ: Final = 250
TOP: Final = 40
PROFILES: Final = report.RESULTS / "profiles"


def _py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    if found is None:
        raise SystemExit("bench: --profile needs py-spy: pip install 'py-spy>=0.4'")
    return found


def profile(fleet: Fleet, tools: Tools, split: CpuSplit, seconds: float, method: str) -> int:
    spy = _py_spy()
    www = fleet.workdir / "www"
    www.mkdir(exist_ok=True)
    upstream = fleet.upstream(www)
    emulator = fleet.emulator("emulator", 3600.0)
    proxy = fleet.vipps_proxy("vipps-proxy-w1", emulator, upstream, workers=1)
    body = POST_BYTES if method == "POST" else 0
    wrk = Wrk(tools, split)
    wrk.saturate(proxy.url, method, body, 2, 64, split.load)  # warm up
    PROFILES.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = PROFILES / f"{stamp}-{method}.speedscope.json"
    argv = [spy, "record", "--pid", str(proxy.process.pid), "--rate", str(RATE_HZ)]
    argv += ["--duration", str(round(seconds)), "--nonblocking", "--format", "speedscope"]
    argv += ["--output", str(out)]
    spy_process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    result = wrk.saturate(proxy.url, method, body, seconds + 1, 64, split.load)
    _, err = spy_process.communicate(timeout=seconds + 60)
    if spy_process.returncode != 0 or not out.exists():
        raise SystemExit(f"bench: py-spy failed: {err.decode(errors='replace').strip()}")
    say(f"{method} under py-spy: {result.rate:,.0f} calls/s (sampling slows it a little)")
    print(summarise(orjson.loads(out.read_bytes())))
    print(f"\nprofile: {out}")
    return 0


def summarise(speedscope: dict[str, Any]) -> str:
    """Top functions by self and by inclusive time, and self time by module, as text."""
    frames = speedscope["shared"]["frames"]
    self_by: Counter[str] = Counter()
    incl_by: Counter[str] = Counter()
    module_by: Counter[str] = Counter()
    total = 0.0
    for prof in speedscope["profiles"]:
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            total += weight
            if not stack:
                continue
            top = frames[stack[-1]]
            self_by[_name(top)] += weight
            module_by[_short(top.get("file", ""))] += weight
            for name in {_name(frames[i]) for i in stack}:
                incl_by[name] += weight
    total = total or 1.0
    lines = [f"{total:.1f} s sampled", "", "self %  function"]
    lines += [f"{100 * n / total:5.1f}  {name}" for name, n in self_by.most_common(TOP)]
    lines += ["", "incl %  function"]
    lines += [f"{100 * n / total:5.1f}  {name}" for name, n in incl_by.most_common(TOP)]
    lines += ["", "self %  module"]
    lines += [f"{100 * n / total:5.1f}  {name}" for name, n in module_by.most_common(TOP)]
    return "\n".join(lines)


def _name(frame: dict[str, Any]) -> str:
    return f"{frame['name']} ({_short(frame.get('file', ''))})"


def _short(path: str) -> str:
    """``aiohttp/client_reqrep.py`` rather than the whole site-packages path."""
    parts = Path(path).parts
    for anchor in ("site-packages", "lib"):
        if anchor in parts:
            index = len(parts) - 1 - parts[::-1].index(anchor)
            return os.path.join(*parts[index + 1 :]) if index + 1 < len(parts) else path
    return os.path.join(*parts[-2:]) if len(parts) >= 2 else path
