"""A newcomer's first hour: what `make run` needs, and the README's examples hold."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]


def make_dry_run(target: str) -> str:
    """What ``make TARGET`` would run on a fresh clone (nothing installed), without running it."""
    result = subprocess.run(
        ["make", "--dry-run", "--always-make", "-C", str(ROOT), target],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


def test_make_run_on_a_fresh_clone_needs_no_npm() -> None:
    """The demo needs Python alone: `make run` installs no Node.js packages."""
    commands = make_dry_run("run")
    assert "vipps-proxy demo" in commands
    assert "npm" not in commands


def test_make_test_installs_the_sdk_checks_node_packages() -> None:
    """`make test` is where npm comes in, for the official SDK test."""
    commands = make_dry_run("test")
    assert "npm ci --prefix tests/clients" in commands


OUTSIDE_THE_REPOSITORY = (
    "VIPPS_SPECS_DIR",
    "shared/vipps-specs",
    '"shared"',
    "parents[2]",
    "/work/",
)


def test_no_test_reads_files_outside_the_repository() -> None:
    """A fresh clone's `make test` has all it reads: no test points beyond the checkout."""
    for source in sorted((ROOT / "tests").glob("*.py")):
        if source.name == Path(__file__).name:
            continue
        text = source.read_text("utf-8")
        found = [marker for marker in OUTSIDE_THE_REPOSITORY if marker in text]
        assert not found, f"{source.name} reads outside the repository: {found}"


def test_the_epayment_specs_references_resolve_inside_tests() -> None:
    """The copied ePayment spec's external `$ref`s name files copied beside it."""
    specs = ROOT / "tests" / "specs"
    text = (specs / "epayment.local.yml").read_text("utf-8")
    external = set(re.findall(r"\$ref: '([^'#][^'#]*)#", text))
    assert external == {"order-management.swagger.yaml"}
    assert all((specs / name).is_file() for name in external)
