"""Metrics of a process group (``workers > 1``): every worker's, summed when scraped.

A scrape reaches one worker, the one the kernel gave the connection to. So that it can
answer for the whole group, the parent makes a folder for the run (`metrics_folder`,
removed when the run ends) and each worker writes a snapshot of its metrics there
every `SHARE_INTERVAL` seconds and when it stops (`share`); a snapshot is written under
a temporary name and renamed, so a reader never sees half of one. A scrape sums the
worker's live metrics with its siblings' last snapshots (`MetricsGroup.collect`):
counters and histograms are the group's totals, at most `SHARE_INTERVAL` seconds
behind for the other workers; the in-flight gauge is the sum too. The ``process_*``
metrics are not summed: each worker's carry its ``pid``, one series per worker.

prometheus_client's own multiprocess mode would need every metric to be its
memory-mapped kind, updated on every call; the proxy's per-call metrics are plain
numbers (see `proxy.metrics`), so the group shares them the way they are made: once
per interval, off the hot path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import orjson
from prometheus_client import Metric

from proxy.startup import StartupError

SHARE_INTERVAL: Final = 1.0

# One family as written: name, help text, type, and samples (name, labels, value).
Snapshot = list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]


@contextmanager
def metrics_folder() -> Iterator[Path]:
    """A private folder for one run's worker snapshots, removed when the run ends."""
    try:
        folder = Path(tempfile.mkdtemp(prefix="vipps-proxy-metrics-"))
    except OSError as exc:  # no writable temporary directory at all
        raise StartupError(
            f"server.workers: cannot make a folder for the workers' metrics (TMPDIR): "
            f"{exc.strerror or exc}"
        ) from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


#: The families of one process (prometheus_client's ``process_*``): per worker, by pid.
PER_PROCESS: Final = "process_"


def snapshot(families: Iterable[Metric], pid: int | None = None) -> Snapshot:
    """Families as plain data, to be written as JSON; with ``pid``, the ``process_*``
    samples are labelled with it, so that each worker's stay apart."""
    return [(f.name, f.documentation, f.type, _samples(f, pid)) for f in families]


def _samples(family: Metric, pid: int | None) -> list[tuple[str, dict[str, str], float]]:
    per_process = pid is not None and family.name.startswith(PER_PROCESS)
    extra = {"pid": str(pid)} if per_process else {}
    return [(s.name, {**s.labels, **extra}, s.value) for s in family.samples]


#: Gauges every worker reads from one shared source (the webhook store) or holds alike
#: (the build): the group's value is the highest any worker saw, not the sum.
SHARED_GAUGES: Final = frozenset(
    {
        "vipps_proxy_webhooks_pending",
        "vipps_proxy_webhooks_oldest_pending_seconds",
        "vipps_proxy_build_info",
    }
)

#: Gauges that are a moment in each worker: the group's value is the earliest, so that
#: a worker lagging behind its siblings (or whose token expires first) shows.
EARLIEST_GAUGES: Final = frozenset(
    {
        "vipps_proxy_config_last_reload_success_timestamp_seconds",
        "vipps_proxy_token_expiry_timestamp_seconds",
    }
)


def merge(snapshots: Iterable[Snapshot]) -> list[Metric]:
    """Families with each sample summed over ``snapshots`` (a gauge in
    ``EARLIEST_GAUGES``: the earliest; a gauge in ``SHARED_GAUGES``: the highest)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families_of_one in snapshots:
        for name, documentation, kind, samples in families_of_one:
            if name not in families:
                families[name] = Metric(name, documentation, kind)
                values[name] = {}
            summed = values[name]
            for sample, labels, value in samples:
                key = (sample, tuple(sorted(labels.items())))
                earlier = summed.get(key)
                if earlier is None:
                    summed[key] = value
                elif name in EARLIEST_GAUGES:
                    summed[key] = min(earlier, value)
                elif name in SHARED_GAUGES:
                    summed[key] = max(earlier, value)
                else:
                    summed[key] = earlier + value
    for name, family in families.items():
        for (sample, label_pairs), value in values[name].items():
            family.add_sample(sample, dict(label_pairs), value)
    return list(families.values())


class MetricsGroup:
    """One worker's place in the run's folder: its own snapshot and its siblings'."""

    def __init__(self, folder: Path, pid: int | None = None) -> None:
        self.folder = folder
        self.pid = pid or os.getpid()
        self.own = folder / f"{self.pid}.json"

    def write(self, families: Iterable[Metric]) -> None:
        """Replace this worker's snapshot, all at once."""
        partial = self.own.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(snapshot(families, self.pid)))
        os.replace(partial, self.own)

    def siblings(self) -> list[Snapshot]:
        """The other workers' last snapshots; one that cannot be read is left out."""
        found = []
        for path in sorted(self.folder.glob("*.json")):
            if path == self.own:
                continue
            try:
                found.append(_as_snapshot(orjson.loads(path.read_bytes())))
            except (OSError, orjson.JSONDecodeError):
                continue  # a worker that never wrote, or a folder being removed
        return found

    def collect(self, own: Iterable[Metric]) -> list[Metric]:
        """This worker's live families summed with its siblings' snapshots."""
        return merge([snapshot(own, self.pid), *self.siblings()])


def _as_snapshot(data: Any) -> Snapshot:
    return [
        (name, doc, kind, [(s, labels, float(v)) for s, labels, v in samples])
        for name, doc, kind, samples in data
    ]


async def share(
    group: MetricsGroup,
    families: Callable[[], Iterable[Metric]],
    interval: float = SHARE_INTERVAL,
) -> None:
    """Write ``families()`` to the group every ``interval`` seconds until cancelled."""
    while True:
        group.write(families())
        await asyncio.sleep(interval)
