"""Mutation testing of the security-critical modules (``make mutate``; not part of CI).

Cosmic Ray makes the mutants (one operator, constant or statement changed at a time);
this driver decides which ones to run and against which tests. Each module runs only
against the test files that exercise it, so a run is bounded. It works in a copy of the
tracked tree under ``mutants/`` (git-ignored): the work tree is never edited.

    python -m scripts.mutate                       # every module
    python -m scripts.mutate proxy/access.py       # one module
    python -m scripts.mutate --sample 40 --seed 1  # at most 40 mutants a module

A mutant is *caught* when its tests fail or time out, and *survives* when they pass.
Mutants listed in ``scripts/mutate_equivalent.toml`` (the original line, the mutated
line, and why no test can tell them apart) are left out of the score.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "mutants"
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
            "tests/test_forwarding.py",
            "tests/test_wire.py",
            "tests/test_properties.py",
            "tests/test_hop_by_hop.py",
            "tests/test_credential_rules.py",
        ),
    ),
    Target(
        "proxy/routing.py",
        (
            "tests/test_security.py",  # traversal, encoded and recased prefixes, ';'
            "tests/test_forwarding.py",
            "tests/test_properties.py",
            "tests/test_setup.py",
            "tests/test_refused_requests.py",
            "tests/test_credential_rules.py",
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
            "tests/test_tokens.py",
            "tests/test_token_endpoint.py",
            "tests/test_token_redirects.py",
        ),
    ),
    Target(
        "proxy/access.py",
        (
            "tests/test_refused_requests.py",
            "tests/test_access.py",
            "tests/test_security.py",
            "-k",
            "allowlist or client_key or access",
        ),
    ),
    Target(
        "proxy/redact.py",
        ("tests/test_logging.py", "tests/test_token_endpoint.py", "tests/test_redact.py"),
    ),
    Target(
        "proxy/upstream.py",
        ("tests/test_wire.py", "tests/test_upstream_faults.py", "tests/test_upstream_pool.py"),
        functions=("_frame", "_request_head", "_held", "request"),  # framing; the resend rule
    ),
    Target("proxy/webhooks/verify.py", ("tests/test_webhooks_verify.py",)),
)


@dataclass
class Outcome:
    target: Target
    total: int  # mutants of the module (or of its chosen functions)
    ran: int = 0
    caught: int = 0
    equivalent: list[str] = field(default_factory=list)
    survivors: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        counted = self.ran - len(self.equivalent)
        return 100.0 * self.caught / counted if counted else 100.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module paths (default: all)")
    parser.add_argument("--sample", type=int, default=0, help="at most N mutants a module")
    parser.add_argument("--seed", type=int, default=17, help="seed for --sample")
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="seconds a mutant (default: 3x the clean run + 10)",
    )
    args = parser.parse_args(argv)
    targets = [t for t in TARGETS if not args.modules or t.module in args.modules]
    if not targets:
        parser.error(f"no such module; choose from {[t.module for t in TARGETS]}")
    _copy_tree()
    equivalent = _load_equivalent()
    outcomes = [_run_target(t, args, equivalent) for t in targets]
    print(_summary(outcomes, args))
    return 0


def _copy_tree() -> None:
    """The tracked files (as in the work tree), copied to ``mutants/``: `git add` a new test."""
    shutil.rmtree(WORK, ignore_errors=True)
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
            (WORK / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, WORK / name)


def _load_equivalent() -> dict[tuple[str, str, str], str]:
    if not EQUIVALENT.exists():
        return {}
    entries = tomllib.loads(EQUIVALENT.read_text())["equivalent"]
    return {(e["module"], e["original"].strip(), e["mutant"].strip()): e["reason"] for e in entries}


def _run_target(target: Target, args: Any, equivalent: dict[tuple[str, str, str], str]) -> Outcome:
    from cosmic_ray.mutating import mutate_and_test

    os.chdir(WORK)
    os.environ["PYTHONPATH"] = str(WORK)
    present = [t for t in target.tests if not t.startswith("tests/") or (WORK / t).exists()]
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *present]
    command = shlex.join(argv)
    started = time.monotonic()
    clean = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    took = time.monotonic() - started
    if clean.returncode != 0:
        sys.exit(f"{target.module}: the tests fail without a mutant:\n{clean.stdout[-3000:]}")
    timeout = args.timeout or 3 * took + 10
    items = _work_items(target)
    outcome = Outcome(target, total=len(items))
    if args.sample and len(items) > args.sample:
        sampler = random.Random(args.seed)  # noqa: S311 (a reproducible sample, not a secret)
        items = sampler.sample(items, args.sample)
    print(
        f"{target.module}: {len(items)} of {outcome.total} "
        f"mutants, clean run {took:.0f}s, timeout {timeout:.0f}s",
        flush=True,
    )
    annotations = _annotation_spans(WORK / target.module)
    for number, item in enumerate(items, 1):
        outcome.ran += 1
        if _inside(item.mutations[0].start_pos, annotations):
            outcome.equivalent.append(f"{_where(item)}: {ANNOTATION}")
            continue
        result = mutate_and_test(item.mutations, command, timeout)
        diff = result.diff or ""
        key = (target.module, *_changed_lines(diff))
        if key in equivalent:
            outcome.equivalent.append(f"{_where(item)}: {key[1]} -> {key[2]}  ({equivalent[key]})")
        elif result.test_outcome is not None and result.test_outcome.value == "killed":
            outcome.caught += 1
        else:
            state = (
                result.test_outcome.value if result.test_outcome else result.worker_outcome.value
            )
            outcome.survivors.append(f"{_where(item)} [{state}]: {key[1]} -> {key[2]}")
        if number % 10 == 0 or number == len(items):
            print(f"  {number}/{len(items)} caught {outcome.caught}", flush=True)
    os.chdir(ROOT)
    return outcome


def _work_items(target: Target) -> list[Any]:
    from cosmic_ray.commands.init import _all_work_items

    items = list(_all_work_items([Path(target.module)], {}))
    if not target.functions:
        return items
    spans = _function_spans(WORK / target.module, target.functions)
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


ANNOTATION = "a type annotation, never evaluated (from __future__ import annotations)"

Position = tuple[int, int]


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
        "| module | caught | ran | of | equivalent | score |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        name = o.target.module + (
            f" ({', '.join(o.target.functions)})" if o.target.functions else ""
        )
        counts = f"{o.caught} | {o.ran} | {o.total} | {len(o.equivalent)}"
        lines.append(f"| `{name}` | {counts} | {o.score:.0f} % |")
    for o in outcomes:
        if o.survivors or o.equivalent:
            lines += ["", f"## {o.target.module}"]
            lines += [f"- survived: {s}" for s in o.survivors]
            lines += [f"- equivalent: {e}" for e in o.equivalent]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
