"""The external programs the benchmark drives, installed from Debian's packages if missing.

wrk (load generator), nginx (fast upstream and reference proxy), curl (1 GiB transfers)
and taskset (CPU split, from util-linux). On a fresh Debian machine, as root, missing
ones are installed with ``apt-get update && apt-get install -y ...``; what runs is
printed first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Final

#: program -> the Debian package that provides it.
PACKAGES: Final = {"wrk": "wrk", "nginx": "nginx", "curl": "curl", "taskset": "util-linux"}
SBIN_DIRS: Final = ("/usr/sbin", "/sbin", "/usr/local/sbin")
APT_TIMEOUT_S: Final = 900


class ToolError(Exception):
    """A program is missing and cannot be installed here."""


@dataclass(frozen=True)
class Tools:
    wrk: str
    nginx: str
    curl: str
    taskset: str


def find(program: str) -> str | None:
    """The program's path, also looking where Debian puts daemons (``/usr/sbin``)."""
    found = shutil.which(program)
    if found:
        return found
    for folder in SBIN_DIRS:
        path = os.path.join(folder, program)
        if os.access(path, os.X_OK):
            return path
    return None


def ensure_tools() -> Tools:
    """Every program found, after installing the missing ones' packages."""
    missing = sorted({PACKAGES[p] for p in PACKAGES if find(p) is None})
    if missing:
        _apt_install(missing)
    paths = {p: find(p) for p in PACKAGES}
    still = [p for p, path in paths.items() if path is None]
    if still:
        raise ToolError(f"still missing after install: {', '.join(still)}")
    return Tools(**{p: str(path) for p, path in paths.items()})


def _apt_install(packages: list[str]) -> None:
    commands = [["apt-get", "update"], ["apt-get", "install", "-y", *packages]]
    shown = " && ".join(" ".join(c) for c in commands)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ToolError(f"missing {', '.join(packages)}: run as root: {shown}")
    print(f"bench: installing what is missing: {shown}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in commands:
        subprocess.run(command, check=True, timeout=APT_TIMEOUT_S, env=env)


def version(argv: list[str]) -> str:
    """The first line a program prints about its version (some print it on stderr)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"
