"""Every emulator answer of the run, checked against Vipps' OpenAPI files.

The emulator checks its own answers when ``VIPPS_EMULATOR_CHECK_SPECS`` names a folder
of OpenAPI files (`proxy.emulator.speccheck`): a violation becomes a loud 500 there,
and each checked answer is a line in the file ``VIPPS_EMULATOR_SPEC_LOG`` names.
`enable` sets both for the whole session, before any emulator starts, so emulators
started as processes inherit them; `summary` reads the file at the session's end.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

SPECS = Path(__file__).parent / "specs"
SPECS_ENV = "VIPPS_EMULATOR_CHECK_SPECS"
LOG_ENV = "VIPPS_EMULATOR_SPEC_LOG"


@dataclass
class Summary:
    """The answers checked in the run, per operation, and the violations found."""

    checked: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        total = sum(self.checked.values())
        head = f"emulator answers checked against tests/specs: {total}"
        each = [f"  {count:6d} {name}" for name, count in sorted(self.checked.items())]
        return [head, *each, *(f"  VIOLATION {v}" for v in self.violations)]


def enable() -> Path:
    """Turn the check on for this process and its children; the log file's path."""
    handle, name = tempfile.mkstemp(prefix="emulator-spec-answers-", suffix=".jsonl")
    os.close(handle)
    os.environ[SPECS_ENV] = str(SPECS)
    os.environ[LOG_ENV] = name
    atexit.register(Path(name).unlink, missing_ok=True)
    return Path(name)


def summary(log: Path) -> Summary:
    """What the emulators wrote to ``log``."""
    found = Summary()
    text = log.read_bytes() if log.exists() else b""
    for line in text.splitlines():
        entry = orjson.loads(line)
        found.checked[str(entry["operation"])] += 1
        if entry["violation"]:
            found.violations.append(f"{entry['operation']} {entry['status']}: {entry['violation']}")
    return found
