"""A newcomer's first hour: what `make run` needs, and the README's examples hold."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from proxy.config import parse_config
from proxy.routing import Router

from .test_config import run_cli

ROOT = Path(__file__).parents[1]


def make_dry_run(target: str, *variables: str) -> str:
    """What ``make TARGET`` would run on a fresh clone (nothing installed), without running it."""
    result = subprocess.run(
        ["make", "--dry-run", "--always-make", "-C", str(ROOT), target, *variables],
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


def test_make_run_installs_the_runtime_dependencies_only() -> None:
    """The demo needs what the proxy needs: the runtime lock and the project, never the
    dev tools (77 packages, 430 MB before the demo's first line)."""
    installs = [line for line in make_dry_run("run").splitlines() if "pip install" in line]
    assert installs
    assert all(
        line.rstrip().endswith(
            (" -r requirements/runtime.lock", "--no-deps --no-build-isolation -e .")
        )
        for line in installs
    ), installs


@pytest.mark.parametrize("target", ["install", "test", "lint"])
def test_make_install_test_and_lint_still_install_the_dev_tools(target: str) -> None:
    """The targets that run the dev tools install them."""
    assert "--require-hashes -r requirements/dev.lock" in make_dry_run(target)


@pytest.mark.parametrize(
    ("variables", "expected"), [((), "demo"), (("PORT=9090",), "demo --port 9090")]
)
def test_make_run_takes_the_proxys_port(variables: tuple[str, ...], expected: str) -> None:
    """`make run PORT=9090` runs the demo with `--port 9090`; without PORT, the default."""
    (demo,) = [line for line in make_dry_run("run", *variables).splitlines() if "demo" in line]
    assert demo.split("vipps-proxy ", 1)[1].strip() == expected


def test_make_test_installs_the_sdk_checks_node_packages() -> None:
    """`make test` is where npm comes in, for the official SDK test."""
    commands = make_dry_run("test")
    assert "npm ci --prefix tests/clients" in commands


OUTSIDE_THE_REPOSITORY = (
    "VIPPS_SPECS" + "_DIR",  # spelled in two so that this guard is not itself a hit
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


def readme_toml_blocks() -> list[str]:
    """Every ```toml block of README.md and of the reference pages that were its sections
    (whole configs; docs/operations.md and docs/tracing.md show fragments)."""
    reference = ("configuration", "tokens", "webhooks", "wire", "observability", "rotation")
    pages = [ROOT / "README.md", *(ROOT / "docs" / f"{name}.md" for name in reference)]
    text = "\n".join(page.read_text("utf-8") for page in pages)
    return re.findall(r"^```toml\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def example_env(block: str) -> dict[str, str]:
    """A value for every ``${NAME}`` the example uses (digits: an MSN may be one)."""
    return dict.fromkeys(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", block), "123456")


def test_the_readme_has_toml_examples() -> None:
    """The examples the next test checks are there to check."""
    assert len(readme_toml_blocks()) >= 4


@pytest.mark.parametrize("index", range(len(readme_toml_blocks())))
def test_each_toml_example_in_the_readme_passes_check(tmp_path: Path, index: int) -> None:
    """A README example, alone in a file, passes `vipps-proxy check` (exit 0)."""
    block = readme_toml_blocks()[index]
    path = tmp_path / "example.toml"
    path.write_text(block)
    result = run_cli("check", "--config", str(path), env=example_env(block))
    assert result.returncode == 0, f"example {index + 1}:\n{block}\n{result.stderr}"


@pytest.mark.parametrize("index", range(len(readme_toml_blocks())))
def test_each_readme_example_still_routes_epayment_calls(index: int) -> None:
    """No example's `[[routes]]` drops the ePayment API by replacing the implicit `/`."""
    block = readme_toml_blocks()[index]
    config = parse_config(tomllib.loads(block), example_env(block))
    route = Router(config.routes).match("/epayment/v1/payments")
    assert route is not None, f"example {index + 1} answers ePayment calls with 404"
    assert route.auth == "bearer"
