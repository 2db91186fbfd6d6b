"""The lock files in requirements/ agree with pyproject.toml (scripts/lock.sh regenerates them).

scripts/setup.sh installs only from the lock files, with ``--require-hashes``: a dependency added
to pyproject.toml but not locked would be missing on a fresh machine, and a pin outside its range
would install what the project never asked for.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def _pins(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / name).read_text()
    return {canonicalize_name(m[1]): m[2] for m in _PIN.finditer(text)}


def _project() -> dict[str, list[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = data["project"]
    return {"": project["dependencies"], **project["optional-dependencies"]}


@pytest.mark.parametrize(("lock", "groups"), [("lock.txt", ("",)), ("lock-test.txt", ("", "test"))])
def test_every_dependency_is_pinned_within_its_range(lock: str, groups: tuple[str, ...]) -> None:
    pins = _pins(lock)
    project = _project()
    for group in groups:
        for spec in project[group]:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            assert name in pins, f"{req.name} ({group or 'runtime'}) is not in requirements/{lock}"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"requirements/{lock} pins {req.name}=={pins[name]}, outside {req.specifier}"
            )


def test_every_pin_carries_a_hash() -> None:
    for lock in ("lock.txt", "lock-test.txt", "bootstrap.txt"):
        text = (ROOT / "requirements" / lock).read_text()
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n\n", 1)[-1])
        for block in blocks:
            if _PIN.match(block):
                assert "--hash=sha256:" in block, f"{lock}: no hash for {block.splitlines()[0]}"


def test_bootstrap_pins_a_setuptools_that_builds_fhirimg() -> None:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = _pins("bootstrap.txt")
    for spec in build:
        req = Requirement(spec)
        assert req.specifier.contains(pins[canonicalize_name(req.name)])
