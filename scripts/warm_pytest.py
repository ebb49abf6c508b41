"""pytest runs for ``make mutate`` without paying pytest's start-up on each one.

Each mutant's tests are a fresh pytest run, and on a busy machine importing pytest, its
plugins, hypothesis and aiohttp takes longer than most mutants' tests. This process
imports those third-party packages once (never the project: not ``proxy``, not
``tests``) and forks a child for each run; the child imports the project from the
mutated copy as a new process would, runs pytest there and exits with pytest's status.
The child leads its own process group, so a timeout kills whatever it started.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Literal

#: Heavy third-party packages the tests import; the project itself is never among them.
WARM = ("pytest", "hypothesis", "aiohttp", "aiohttp.test_utils", "structlog", "yarl", "h11")

Verdict = Literal["killed", "survived", "timeout"]


def warm_up() -> None:
    """Import pytest, its plugins and the heavy libraries in this (the parent) process."""
    for name in WARM:
        importlib.import_module(name)
    for plugin in entry_points(group="pytest11"):
        importlib.import_module(plugin.value.split(":")[0])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("proxy", "tests"))
    if leaked:
        sys.exit(f"the warm-up imported the project itself: {leaked}")


def run(args: list[str], work: Path, timeout: float) -> Verdict:
    """pytest ``args`` in ``work`` (a forked child): killed (tests fail), survived, timeout."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        _child(args, work)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            _kill_group(pid)  # whatever the tests started and left running
            return "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"
        time.sleep(0.1)
    _kill_group(pid)
    os.waitpid(pid, 0)
    return "timeout"


def _child(args: list[str], work: Path) -> None:
    code = 70
    try:
        os.setsid()
        os.chdir(work)
        sys.path.insert(0, str(work))
        sys.dont_write_bytecode = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        import pytest

        # The plugins were imported before pytest could mark them for assertion
        # rewriting; its warning (an error under the project's filterwarnings) says only
        # that a failing assert inside a plugin would read less well.
        code = int(pytest.main(["-W", "ignore::pytest.PytestAssertRewriteWarning", *args]))
    finally:
        os._exit(code)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
