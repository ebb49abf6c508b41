"""Mutation testing of the security-critical modules (``make mutate``; not part of CI).

Cosmic Ray makes the mutants (one operator, constant or statement changed at a time);
this driver decides which ones to run and against which tests. Each module runs only
against the test files that exercise it (fastest and most specific first, stopping at
the first failure), so a run is bounded. It works in a copy of the tracked tree under
``mutants/`` (git-ignored): the work tree is never edited. Two runs at once need two
copies: ``--tree NAME`` (each its own modules).

    python -m scripts.mutate                       # every module
    python -m scripts.mutate proxy/access.py       # one module
    python -m scripts.mutate --sample 40 --seed 1  # at most 40 mutants a module
    python -m scripts.mutate --survivors proxy/access.py  # rerun the last survivors
    python -m scripts.mutate --report              # the last results, judged again

A mutant is *caught* when its tests fail or time out (timeouts are counted apart), and
*survives* when they pass. Each mutant's result is kept in ``mutants/results/`` so the
score can be judged again (``--report``) after the equivalents file changes. Mutants
listed in ``scripts/mutate_equivalent.toml`` (the original line, the mutated line, and
why no test can tell them apart) are left out of the score; lines are compared token by
token, so spacing and comments do not matter. A listed mutant that a full run never
made is reported: the entry is stale.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import io
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
import tokenize
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts import warm_pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "mutants" / "results"  # each mutant's result, kept between runs
EQUIVALENT = ROOT / "scripts" / "mutate_equivalent.toml"


@dataclass(frozen=True)
class Target:
    """A module, the tests that judge it, and (optionally) the functions to mutate."""

    module: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()


TARGETS = (
    Target(
        "proxy/headers.py",
        (
            "tests/test_hop_by_hop.py",
            "tests/test_credential_rules.py",
            "tests/test_forwarding.py",
            "tests/test_wire.py",
            "tests/test_properties.py",
        ),
    ),
    Target(
        "proxy/routing.py",
        (
            "tests/test_security.py",  # traversal, encoded and recased prefixes, ';'
            "tests/test_refused_requests.py",
            "tests/test_credential_rules.py",
            "tests/test_forwarding.py",
            "tests/test_setup.py",
            "tests/test_properties.py",
        ),
    ),
    Target(
        "proxy/tokens.py",
        (
            "tests/test_tokens.py",
            "tests/test_token_endpoint.py",
            "tests/test_token_redirects.py",
        ),
    ),
    Target(
        "proxy/tokenfetch.py",
        (
            "tests/test_token_client.py",  # Retry-After read, the request each style sends
            "tests/test_tokens.py",
            "tests/test_token_endpoint.py",
            "tests/test_token_redirects.py",
            "tests/test_dashboard_metrics.py",  # the lifetime held, as the expiry metric
        ),
    ),
    Target(
        "proxy/access.py",
        (
            "tests/test_access.py",
            "tests/test_refused_requests.py",
            "tests/test_refused_peers.py",  # who is closed as it is accepted
            "tests/test_security.py",
            "-k",
            "allowlist or client_key or access or at_accept",
        ),
    ),
    Target(
        "proxy/redact.py",
        (
            "tests/test_redact.py",
            "tests/test_url_credentials.py",  # masked_url, through `vipps-proxy check`
            "tests/test_logging.py",
            "tests/test_token_endpoint.py",
        ),
    ),
    Target(
        "proxy/upstream.py",
        ("tests/test_wire.py", "tests/test_upstream_faults.py", "tests/test_upstream_pool.py"),
        functions=("_frame", "_request_head", "_held", "request"),  # framing; the resend rule
    ),
    Target("proxy/webhooks/verify.py", ("tests/test_webhooks_verify.py",)),
)

ANNOTATION = "a type annotation, never evaluated (from __future__ import annotations)"

Position = tuple[int, int]
Key = tuple[str, str, str]  # module, original line(s), mutated line(s): normalised


@dataclass
class Outcome:
    target: Target
    total: int  # mutants of the module (or of its chosen functions)
    ran: int = 0
    caught: int = 0
    timeouts: int = 0  # of the caught
    equivalent: list[str] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # listed equivalents never made
    refuted: list[str] = field(default_factory=list)  # listed equivalents a test caught
    unmade: list[str] = field(default_factory=list)  # Cosmic Ray could not write them

    @property
    def counted(self) -> int:
        return self.ran - len(self.equivalent) - len(self.unmade)

    @property
    def score(self) -> float:
        return 100.0 * self.caught / self.counted if self.counted else 100.0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    targets = [t for t in TARGETS if not args.modules or t.module in args.modules]
    if not targets:
        sys.exit(f"no such module; choose from {[t.module for t in TARGETS]}")
    equivalent = _load_equivalent()
    if not args.report:
        warm_pytest.warm_up()
        work = ROOT / "mutants" / args.tree
        _copy_tree(work)
        for target in targets:
            _run_target(target, args, work, equivalent)
    outcomes = [_judge(t, _load_results(t), equivalent) for t in targets]
    print(_summary(outcomes, args))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module paths (default: all)")
    parser.add_argument("--sample", type=int, default=0, help="at most N mutants a module")
    parser.add_argument("--seed", type=int, default=17, help="seed for --sample")
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="seconds a mutant (default: 5x the clean run + 30; a timeout is caught)",
    )
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="run the last run's survivors again (not those listed as equivalent)",
    )
    parser.add_argument("--report", action="store_true", help="judge the last results; run none")
    parser.add_argument(
        "--resume", action="store_true", help="run only the mutants the last run did not reach"
    )
    parser.add_argument("--tree", default="tree", help="the copy under mutants/ to work in")
    return parser


def _copy_tree(work: Path) -> None:
    """The tracked files (as in the work tree), copied to ``work``: `git add` a new test."""
    shutil.rmtree(work, ignore_errors=True)
    listed = subprocess.run(
        ["git", "ls-files"],  # noqa: S607
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    for name in listed:
        source = ROOT / name
        if source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)


def normal(code: str) -> str:
    """A line as its tokens, without comments: spacing and comments never decide a match."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code.strip()).readline))
    except (tokenize.TokenError, SyntaxError):  # a piece of a statement: a bracket left open
        return " ".join(code.split("#", 1)[0].split())
    return " ".join(t.string for t in tokens if t.type not in skip and t.string)


def _load_equivalent(path: Path = EQUIVALENT) -> dict[Key, str]:
    if not path.exists():
        return {}
    entries = tomllib.loads(path.read_text())["equivalent"]
    return {
        (e["module"], _normal_lines(e["original"]), _normal_lines(e["mutant"])): e["reason"]
        for e in entries
    }


def _normal_lines(text: str) -> str:
    return " / ".join(normal(line) for line in text.split(" / "))


def _run_target(target: Target, args: Any, work: Path, equivalent: dict[Key, str]) -> None:
    os.chdir(work)
    os.environ["PYTHONPATH"] = str(work)  # for the processes the tests start
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    present = [t for t in target.tests if not t.startswith("tests/") or (work / t).exists()]
    pytest_args = ["-x", "-q", "-p", "no:cacheprovider", *present]
    started = time.monotonic()
    if warm_pytest.run(pytest_args, work, timeout=3600) != "survived":
        sys.exit(f"{target.module}: the tests fail without a mutant: {shlex.join(pytest_args)}")
    took = time.monotonic() - started
    timeout = args.timeout or 5 * took + 30
    items = _chosen(target, args, equivalent)
    print(
        f"{target.module}: {len(items)} mutants, clean run {took:.0f}s, timeout {timeout:.0f}s",
        flush=True,
    )
    annotations = _annotation_spans(work / target.module)
    results = _load_results(target) if args.survivors or args.resume else {}
    for number, item in enumerate(items, 1):
        if _inside(item.mutations[0].start_pos, annotations):
            results[_ident(item)] = {"where": _where(item), "state": "annotation"}
        else:
            results[_ident(item)] = _mutant_tested(item, pytest_args, work, timeout)
        _save_results(target, results)
        if number % 10 == 0 or number == len(items):
            print(f"  {number}/{len(items)}", flush=True)
    os.chdir(ROOT)


def _mutant_tested(item: Any, pytest_args: list[str], work: Path, timeout: float) -> dict[str, str]:
    """The mutant made in ``work`` (undone after), its tests' verdict, and its lines."""
    from cosmic_ray.mutating import use_mutation
    from cosmic_ray.plugins import get_operator

    spec = item.mutations[0]
    operator = get_operator(spec.operator_name)(**getattr(spec, "operator_args", {}))
    began = time.monotonic()
    try:
        with use_mutation(spec.module_path, operator, spec.occurrence) as (before, after):
            if after is None:
                return {"where": _where(item), "state": "no-test"}
            state = warm_pytest.run(pytest_args, work, timeout)
    except AttributeError as exc:  # Cosmic Ray 8.7's ExceptionReplacer on `except a.B:`
        return {"where": _where(item), "state": "unmade", "why": f"{type(exc).__name__}: {exc}"}
    removed, added = _changed_lines(
        "\n".join(
            difflib.unified_diff(before.split("\n"), after.split("\n"), "a", "b", lineterm="")
        )
    )
    return {
        "where": _where(item),
        "state": state,
        "original": removed,
        "mutant": added,
        "seconds": f"{time.monotonic() - began:.0f}",
    }


def _chosen(target: Target, args: Any, equivalent: dict[Key, str]) -> list[Any]:
    items = _work_items(target)
    last = _load_results(target)
    if args.survivors:  # those not listed as equivalent
        survived = {
            ident
            for ident, r in last.items()
            if r["state"] == "survived" and _key(target, r) not in equivalent
        }
        return [i for i in items if _ident(i) in survived]
    if args.resume:
        return [i for i in items if _ident(i) not in last]
    if args.sample and len(items) > args.sample:
        sampler = random.Random(args.seed)  # noqa: S311 (a reproducible sample, not a secret)
        return sampler.sample(items, args.sample)
    return items


def _results_file(target: Target) -> Path:
    return RESULTS / (target.module.replace("/", "__") + ".json")


def _load_results(target: Target) -> dict[str, dict[str, str]]:
    path = _results_file(target)
    return json.loads(path.read_text()) if path.exists() else {}


def _save_results(target: Target, results: dict[str, dict[str, str]]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    _results_file(target).write_text(json.dumps(results, indent=1))


def _judge(
    target: Target, results: dict[str, dict[str, str]], equivalent: dict[Key, str]
) -> Outcome:
    outcome = Outcome(target, total=len(_work_items(target)))
    seen: set[Key] = set()
    for record in results.values():
        outcome.ran += 1
        if record["state"] == "annotation":
            outcome.equivalent.append(f"{record['where']}: {ANNOTATION}")
            continue
        if record["state"] in ("unmade", "no-test"):  # no mutant to judge
            outcome.unmade.append(f"{record['where']}: {record.get('why', record['state'])}")
            continue
        key = _key(target, record)
        seen.add(key)
        shown = f"{record['original']} -> {record['mutant']}"
        caught = record["state"] in ("killed", "timeout")
        if key in equivalent and not caught:
            outcome.equivalent.append(f"{record['where']}: {shown}  ({equivalent[key]})")
        elif caught:
            outcome.caught += 1
            outcome.timeouts += record["state"] == "timeout"
            if key in equivalent:  # a test tells it apart after all: the entry is wrong
                outcome.refuted.append(f"{record['where']}: {shown}")
        else:
            outcome.survivors.append(f"{record['where']} [{record['state']}]: {shown}")
    if outcome.ran == outcome.total:
        listed = (k for k in equivalent if k[0] == target.module and k not in seen)
        outcome.stale = [f"{k[1]} -> {k[2]}" for k in listed]
    return outcome


def _key(target: Target, record: dict[str, str]) -> Key:
    return (target.module, _normal_lines(record["original"]), _normal_lines(record["mutant"]))


def _work_items(target: Target) -> list[Any]:
    from cosmic_ray.commands.init import _all_work_items

    items = list(_all_work_items([Path(target.module)], {}))
    if not target.functions:
        return items
    spans = _function_spans(ROOT / target.module, target.functions)
    return [i for i in items if any(a <= i.mutations[0].start_pos[0] <= b for a, b in spans)]


def _function_spans(path: Path, names: tuple[str, ...]) -> list[tuple[int, int]]:
    tree = ast.parse(path.read_text())
    spans = [
        (node.lineno, node.end_lineno or node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in names
    ]
    missing = set(names) - {
        n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    if missing:
        sys.exit(f"{path}: no function {sorted(missing)}")
    return spans


def _annotation_spans(path: Path) -> list[tuple[Position, Position]]:
    """Where the module's annotations are: with ``from __future__ import annotations``
    they are kept as text and never run, so mutating them changes nothing."""
    tree = ast.parse(path.read_text())
    if not any(
        isinstance(n, ast.ImportFrom)
        and n.module == "__future__"
        and n.names[0].name == "annotations"
        for n in tree.body
    ):
        return []
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            found.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            found.append(node.returns)
    return [
        ((a.lineno, a.col_offset), (a.end_lineno or a.lineno, a.end_col_offset or 0)) for a in found
    ]


def _inside(position: Position, spans: list[tuple[Position, Position]]) -> bool:
    return any(start <= tuple(position) < end for start, end in spans)


def _changed_lines(diff: str) -> tuple[str, str]:
    lines = diff.splitlines()
    removed = " / ".join(
        x[1:].strip() for x in lines if x.startswith("-") and not x.startswith("---")
    )
    added = " / ".join(
        x[1:].strip() for x in lines if x.startswith("+") and not x.startswith("+++")
    )
    return removed, added


def _ident(item: Any) -> str:
    spec = item.mutations[0]
    return f"{spec.start_pos[0]}:{spec.start_pos[1]}:{spec.operator_name}:{spec.occurrence}"


def _where(item: Any) -> str:
    spec = item.mutations[0]
    return (
        f"line {spec.start_pos[0]} {spec.definition_name or ''} {spec.operator_name.split('/')[-1]}"
    )


def _summary(outcomes: list[Outcome], args: Any) -> str:
    sampled = f" (sample of at most {args.sample}, seed {args.seed})" if args.sample else ""
    lines = [
        f"Mutation score{sampled}",
        "",
        "| module | mutants | run | equivalent | caught (timeouts) | survived | score |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        name = o.target.module + (
            f" ({', '.join(o.target.functions)})" if o.target.functions else ""
        )
        counts = f"{o.total} | {o.ran} | {len(o.equivalent)} | {o.caught} ({o.timeouts})"
        lines.append(f"| `{name}` | {counts} | {len(o.survivors)} | {o.score:.0f} % |")
    for o in outcomes:
        if o.survivors or o.equivalent or o.stale or o.refuted or o.unmade:
            lines += ["", f"## {o.target.module}"]
            lines += [f"- survived: {s}" for s in o.survivors]
            lines += [
                f"- not made (Cosmic Ray failed to write it; not scored): {u}" for u in o.unmade
            ]
            lines += [f"- equivalent: {e}" for e in o.equivalent]
            lines += [f"- listed as equivalent, never made (stale entry): {s}" for s in o.stale]
            lines += [f"- listed as equivalent, yet caught (wrong entry): {s}" for s in o.refuted]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
