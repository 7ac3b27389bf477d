"""The lock files (``requirements/*.txt``, written by ``make lock``) agree with
``pyproject.toml``: a dependency added or raised there without ``make lock`` fails here,
before an install from the lock file would miss it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: Each lock file and the extras it is compiled with.
LOCKS = {"runtime": (), "dev": ("dev",), "bench": ("dev", "bench")}


def pins(lock: Path) -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", lock.read_text(), re.MULTILINE)
    return {canonicalize_name(name): version for name, version in found}


def required(extras: tuple[str, ...]) -> list[Requirement]:
    listed = PROJECT["dependencies"] + [
        r for extra in extras for r in PROJECT["optional-dependencies"][extra]
    ]
    return [Requirement(r) for r in listed]


@pytest.mark.parametrize(("lock", "extras"), LOCKS.items())
def test_every_dependency_is_pinned_at_a_version_pyproject_allows(
    lock: str, extras: tuple[str, ...]
) -> None:
    pinned = pins(ROOT / "requirements" / f"{lock}.txt")
    for requirement in required(extras):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} is not in requirements/{lock}.txt: make lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"requirements/{lock}.txt pins {name}=={pinned[name]}, outside {requirement}"
        )


def test_the_runtime_lock_holds_nothing_only_development_needs() -> None:
    runtime = pins(ROOT / "requirements" / "runtime.txt")
    development = {
        canonicalize_name(Requirement(r).name) for r in PROJECT["optional-dependencies"]["dev"]
    }

    assert sorted(development & set(runtime)) == []
