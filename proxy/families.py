"""Metric families made when scraped: the one shape every collector of the proxy has.

The proxy's own collectors (per-call numbers, token expiries, the webhook backlog)
keep plain values, or read them from a source, and become Prometheus families only at
scrape time. ``ScrapeCollector`` is such a collector: its ``describe`` is its
``collect``, so that a registry learns its names when it is registered. ``family``
makes one counter or gauge family from ``(label values, value)`` pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from prometheus_client import Metric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

Family = TypeVar("Family", CounterMetricFamily, GaugeMetricFamily)

#: One series of a family: its label values (in the family's label order) and value.
Sample = tuple[Sequence[str], float]


def family(
    kind: type[Family],
    name: str,
    documentation: str,
    labels: Sequence[str],
    samples: Iterable[Sample],
) -> Family:
    """A ``kind`` family named ``name``, with one series per sample, in their order."""
    made = kind(name, documentation, labels=list(labels))
    for values, value in samples:
        made.add_metric(list(values), value)
    return made


class ScrapeCollector:
    """A collector whose families are made at each scrape by ``collect``."""

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        return self.collect()
