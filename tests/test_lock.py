"""The lock files: every dependency pyproject.toml names is pinned, inside its bounds, with hashes.

`make install` and the Dockerfile install with ``--require-hashes`` from these files, so a
dependency added to pyproject.toml without `make lock` would be missing from every install;
this test says so first, naming it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def pins(lock: str) -> dict[str, str]:
    """Name (canonical) to pinned version, read from a uv/pip-compile lock file."""
    text = (ROOT / "requirements" / lock).read_text()
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


def declared(extra: str | None) -> list[Requirement]:
    """The runtime dependencies, or those of one extra."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    names = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(name) for name in names]


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("runtime.lock", [None]), ("dev.lock", [None, "dev"])],
)
def test_every_declared_dependency_is_pinned_inside_its_bounds(
    lock: str, extras: list[str | None]
) -> None:
    pinned = pins(lock)
    for extra in extras:
        for req in declared(extra):
            if req.marker is not None and not req.marker.evaluate({"extra": extra or ""}):
                continue
            name = canonicalize_name(req.name)
            assert name in pinned, f"{req.name} is not in requirements/{lock}: run `make lock`"
            assert req.specifier.contains(pinned[name], prereleases=True), (
                f"requirements/{lock} pins {req.name}=={pinned[name]} outside {req.specifier}"
            )


@pytest.mark.parametrize("lock", ["runtime.lock", "dev.lock"])
def test_every_pin_carries_a_hash(lock: str) -> None:
    text = (ROOT / "requirements" / lock).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    for entry in entries:
        if PIN.match(entry):
            assert "--hash=sha256:" in entry, entry.splitlines()[0]


def test_the_locked_setuptools_builds_the_project() -> None:
    """The project is installed with --no-build-isolation: its build backend must be pinned."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        requires = tomllib.load(f)["build-system"]["requires"]
    for lock in ("runtime.lock", "dev.lock"):
        pinned = pins(lock)
        for req in map(Requirement, requires):
            assert req.specifier.contains(pinned[canonicalize_name(req.name)])
