"""CPU time and memory of a process and its descendants, read from ``/proc``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
PROC: Final = Path("/proc")


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant, parents first."""
    found = [pid]
    for parent in found:  # grows while iterating: a breadth-first walk
        found.extend(c for c in _children(parent) if c not in found)
    return found


def _children(pid: int) -> list[int]:
    try:
        text = (PROC / str(pid) / "task" / str(pid) / "children").read_text()
    except OSError:
        return _children_by_scan(pid)
    return [int(c) for c in text.split()]


def _children_by_scan(pid: int) -> list[int]:
    """For kernels without ``children`` files: every process whose parent is ``pid``."""
    out = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and _stat_fields(int(entry.name))[1:2] == [str(pid)]:
            out.append(int(entry.name))
    return out


def _stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: field 3 (state) is index 0."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return []
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used, in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / CLOCK_TICKS


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` line of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``); 0 if gone."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(pids: list[int], field: str = "VmRSS") -> float:
    """Resident memory of the processes together, in MiB."""
    return sum(status_kib(p, field) for p in pids) / 1024


def reset_peak(pids: list[int]) -> bool:
    """Reset each process's VmHWM to its current RSS (Linux ``clear_refs`` 5)."""
    try:
        for pid in pids:
            (PROC / str(pid) / "clear_refs").write_text("5")
    except OSError:
        return False
    return True


def machine_cpu() -> tuple[float, float]:
    """Seconds all CPUs have spent busy, and stolen by the hypervisor, since boot."""
    with (PROC / "stat").open() as stat:
        fields = [int(f) for f in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS
