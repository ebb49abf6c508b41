"""What machine the numbers come from, and how its CPUs are split between the parties."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from bench.tools import Tools, version


@dataclass(frozen=True)
class CpuSplit:
    """``taskset`` CPU lists: the server under test, and the load plus the upstream.

    With one worker the server has CPU ``proxy`` to itself, and wrk, the upstream and
    the emulator share CPU ``load``. With two workers everyone shares ``shared``.
    """

    proxy: str
    load: str
    shared: str
    pinned: bool

    def prefix(self, cpus: str, taskset: str) -> list[str]:
        return [taskset, "-c", cpus] if self.pinned else []

    def describe(self) -> str:
        if not self.pinned:
            return "not pinned (fewer than 2 CPUs usable)"
        return (
            f"server under test on CPU {self.proxy}; wrk/curl, upstream nginx and emulator on "
            f"CPU {self.load}; workers=2 runs put everything on CPUs {self.shared}"
        )


def cpu_split() -> CpuSplit:
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return CpuSplit("", "", "", pinned=False)
    first, second = usable[0], usable[1]
    return CpuSplit(str(first), str(second), f"{first},{second}", pinned=True)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package(name: str) -> str:
    try:
        return package_version(name)
    except PackageNotFoundError:
        return "not installed"


def describe(tools: Tools, split: CpuSplit) -> dict[str, Any]:
    """The machine and software versions, for the table's heading and the JSON."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": _package("aiohttp"),
        "uvloop": _package("uvloop"),
        "structlog": _package("structlog"),
        "orjson": _package("orjson"),
        "nginx": version([tools.nginx, "-v"]).removeprefix("nginx version: "),
        "wrk": version([tools.wrk, "-v"]).split(" [")[0],
        "curl": " ".join(version([tools.curl, "--version"]).split()[:2]),
        "cpu_split": split.describe(),
    }
