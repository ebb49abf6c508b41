"""A release: `make dist` builds a wheel and an sdist that install into a fresh virtual
environment and run; CHANGELOG.md in Keep a Changelog form, its newest release the
version pyproject.toml gives."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path

import aiohttp
import pytest

from tests.processes import read_until, running_demo

ROOT = Path(__file__).resolve().parents[1]
CHANGELOG = ROOT / "CHANGELOG.md"
RELEASE = re.compile(r"## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})")
SECTIONS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
INSTALL_TIMEOUT = 600.0


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def headings(level: str) -> list[str]:
    return [line for line in CHANGELOG.read_text().splitlines() if line.startswith(level + " ")]


def test_changelog_opens_with_unreleased_then_releases_newest_first() -> None:
    """`## [Unreleased]` first, then `## [X.Y.Z] - YYYY-MM-DD` entries with falling
    versions and dates; the newest is pyproject.toml's version, the oldest 0.1.0."""
    versions = headings("##")
    assert versions[0] == "## [Unreleased]"
    releases = [RELEASE.fullmatch(line) for line in versions[1:]]
    assert all(releases), versions
    numbers = [tuple(map(int, m[1].split("."))) for m in releases if m]
    days = [date.fromisoformat(m[2]) for m in releases if m]
    assert numbers == sorted(numbers, reverse=True)
    assert days == sorted(days, reverse=True)
    assert releases[0] is not None
    assert releases[0][1] == project_version()
    assert numbers[-1] == (0, 1, 0)


def test_changelog_sections_are_keep_a_changelogs() -> None:
    """Within a release, changes are grouped under Keep a Changelog's six headings."""
    found = {line.removeprefix("### ") for line in headings("###")}
    assert found
    assert found <= SECTIONS, found - SECTIONS


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make dist` into a temporary folder, with the virtual environment running this."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        ["make", "-C", str(ROOT), "dist", f"DIST={out}", f"VENV={sys.prefix}", "STAMP="],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def fresh_venv(where: Path, package: Path) -> Path:
    """A new virtual environment with ``package`` installed by pip; its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    bin_dir = where / "bin"
    done = subprocess.run(
        [str(bin_dir / "pip"), "install", "--quiet", "--disable-pip-version-check", str(package)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return bin_dir


async def demo_creates_a_payment(program: Path) -> None:
    """`vipps-proxy demo` from ``program``: its curl line, then that payment made."""
    # An empty PYTHONPATH is no path: the installed package alone is imported.
    async with running_demo(command=[str(program)], cwd="/", env={"PYTHONPATH": ""}) as (
        demo,
        port,
    ):
        line = (await read_until(demo, b"curl ")).strip()
        body = line.split(b" -d '", 1)[1].rstrip(b"'")
        key = re.search(rb"Idempotency-Key: ([\w-]+)", line)
        assert key is not None
        async with (
            aiohttp.ClientSession() as client,
            client.post(
                f"http://127.0.0.1:{port}/epayment/v1/payments",
                data=body,
                headers={"Content-Type": "application/json", "Idempotency-Key": key[1].decode()},
            ) as created,
        ):
            assert created.status == 201, await created.text()


def installed(dist: Path, kind: str, where: Path) -> Path:
    """The wheel or the sdist of ``dist`` in a fresh venv, its `--version` checked."""
    (wheel,) = dist.glob(f"vipps_proxy-{project_version()}-*.whl")
    (sdist,) = dist.glob(f"vipps_proxy-{project_version()}.tar.gz")
    bin_dir = fresh_venv(where, wheel if kind == "wheel" else sdist)
    version = subprocess.run(
        [str(bin_dir / "vipps-proxy"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd="/",
    )
    assert version.stdout == f"vipps-proxy {project_version()}\n"
    return bin_dir


@pytest.mark.timeout(2 * INSTALL_TIMEOUT)
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
async def test_a_built_package_installs_into_a_fresh_venv_and_runs_the_demo(
    dist: Path, tmp_path: Path, kind: str
) -> None:
    """`make dist` gives one wheel and one sdist; either, installed by pip into a new
    virtual environment, gives `vipps-proxy --version` and a demo whose curl line
    creates a payment (the demo's own config file is in the package)."""
    bin_dir = await asyncio.to_thread(installed, dist, kind, tmp_path / "venv")
    await demo_creates_a_payment(bin_dir / "vipps-proxy")
