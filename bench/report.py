"""The one table (Markdown, so the README can show it as printed), the targets, the JSON."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

BARE: Final = "bare aiohttp"
NGINX: Final = "nginx proxy"
W1: Final = "vipps-proxy w=1"
W2: Final = "vipps-proxy w=2"
RESULTS: Final = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    limit: float
    at_least: bool  # True: value >= limit; False: value <= limit (or < for RSS)

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def cell(self) -> str:
        sign = "≥" if self.at_least else "≤"
        return f"{sign} {self.limit:g}: {'met' if self.met else '**missed**'}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": round(self.value, 3),
            "limit": self.limit,
            "at_least": self.at_least,
            "met": self.met,
        }


def _cpu(row: dict[str, Any]) -> str:
    return f"{row['cpu_us_per_call']:.0f} µs/call" if "cpu_us_per_call" in row else ""


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


class Report:
    """Builds rows and targets from one run's results."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.r = results
        self.rows: list[tuple[str, str, str, str, str, str]] = []
        self.targets: list[Target] = []

    def _row(self, *cells: str) -> None:
        a, b, c, d, e, f = cells
        self.rows.append((a, b, c, d, e, f))

    def _target(self, name: str, value: float, limit: float, *, at_least: bool) -> str:
        target = Target(name, value, limit, at_least=at_least)
        self.targets.append(target)
        return target.cell()

    def build(self) -> str:
        self._saturation()
        self._latency()
        self._streaming()
        self._refresh()
        return self.table()

    def _saturation(self) -> None:
        rows = self.r["saturation"]
        for method in ("GET", "POST"):
            by = {row["subject"]: row for row in rows if row["method"] == method}
            what = "small JSON GET" if method == "GET" else "1 KiB POST"
            bare = by[BARE]["calls_per_s"]
            for subject, row in by.items():
                ratio, target = "", ""
                if subject == BARE:
                    ratio = "1.00 (floor)"
                elif subject == W2:
                    r2 = _ratio(row["calls_per_s"], by[W1]["calls_per_s"])
                    ratio = f"{r2:.2f} x w=1"
                    target = self._target(f"{method} workers=2 / workers=1", r2, 1.3, at_least=True)
                else:
                    r1 = _ratio(row["calls_per_s"], bare)
                    ratio = f"{r1:.2f} x bare"
                    if subject == W1:
                        target = self._target(f"{method} w=1 / bare", r1, 0.40, at_least=True)
                failed = sum(row["errors"].values())
                self._row(
                    f"{what}, calls/s",
                    subject,
                    f"{row['calls_per_s']:,.0f}" + (f" ({failed} errors)" if failed else ""),
                    _cpu(row),
                    ratio,
                    target,
                )

    def _latency(self) -> None:
        lat = self.r["latency"]
        direct = lat["direct"]["latency_ms"]
        head = f"latency at {lat['rate']}/s, ms p50 / p99 / p99.9"

        def triple(ms: dict[str, float]) -> str:
            return f"{ms['p50']:.2f} / {ms['p99']:.2f} / {ms['p999']:.2f}"

        self._row(
            head,
            f"direct ({lat['direct']['calls_per_s']:.0f}/s)",
            triple(direct),
            _cpu(lat["direct"]),
            "",
            "",
        )

        for subject in (NGINX, W1):
            if subject not in lat:
                continue
            ms = lat[subject]["latency_ms"]
            added = {k: ms[k] - direct[k] for k in ("p50", "p99", "p999")}
            target = ""
            if subject == W1:
                t50 = self._target("added latency p50 ms", added["p50"], 1.0, at_least=False)
                t99 = self._target("added latency p99 ms", added["p99"], 3.0, at_least=False)
                target = f"p50 {t50}; p99 {t99}"
            self._row(
                head, subject, triple(ms), _cpu(lat[subject]), f"+{triple(added)} added", target
            )

    def _streaming(self) -> None:
        st = self.r["streaming"]
        size = st["bytes"] / (1 << 30)
        for direction in ("down", "up"):
            what = f"stream {size:g} GiB {direction}, MB/s"
            ref = st[NGINX][direction]["mb_per_s"]
            for subject in (NGINX, W1):
                row = st[subject][direction]
                rss = f"peak RSS {row['peak_rss_mib']:.0f} MiB"
                ratio, target = "1.00 (reference)", ""
                if subject == W1:
                    r = _ratio(row["mb_per_s"], ref)
                    ratio = f"{r:.2f} x nginx"
                    tr = self._target(f"stream {direction} / nginx", r, 0.8, at_least=True)
                    tm = self._target(
                        f"stream {direction} peak RSS MiB", row["peak_rss_mib"], 64, at_least=False
                    )
                    target = f"{tr}; RSS {tm}"
                cpu = f"{row['cpu_s_per_gb']:.2f} s/GB" if "cpu_s_per_gb" in row else ""
                self._row(what, subject, f"{row['mb_per_s']:,.0f} ({rss})", cpu, ratio, target)

    def _refresh(self) -> None:
        rf = self.r["refresh"]
        near, elsewhere = rf["p99_near_ms"], rf["p99_elsewhere_ms"]
        spike = near - 1.5 * elsewhere
        target = self._target(
            "p99 near refresh - 1.5 x p99 elsewhere, ms", spike, 0.5, at_least=False
        )
        self._row(
            f"token refresh ({rf['token_lifetime_s']:g} s tokens, {rf['rate']}/s open loop)",
            W1,
            f"p99 {near:.2f} ms within ±0.5 s of {rf['refreshes']} refreshes",
            "",
            f"p99 {elsewhere:.2f} ms elsewhere; {rf['failed']} failed",
            f"no spike: {target}",
        )

    def table(self) -> str:
        head = ("measurement", "subject", "result", "server CPU", "compared", "target")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        last = ""
        for row in self.rows:
            first = row[0] if row[0] != last else ""
            last = row[0]
            lines.append("| " + " | ".join((first, *row[1:])) + " |")
        return "\n".join(lines)


def heading(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (
        f"vipps-proxy {results.get('proxy_source', '')} benchmark, "
        f"{results['plan']['name']} run, {results['started']}\n"
        f"machine: {m['cpu_model']}, {m['cores']} cores, kernel {m['kernel']}, "
        f"Python {m['python']}, aiohttp {m['aiohttp']}, uvloop {m['uvloop']}, "
        f"nginx {m['nginx']}, {m['wrk']}\n"
        f"CPUs: {m['cpu_split']}; others' load before the run: "
        f"{m.get('background_cpu_percent', 0):g}% of one CPU"
    )


def write(results: dict[str, Any], stamp: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{stamp}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return path
