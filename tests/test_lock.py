"""The lock and pyproject.toml agree, and the environment under test is the locked one.

`make check-lock` is the full check (it re-resolves with pip-tools); these are the offline halves of it
that every CI run can afford.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def locked() -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall((ROOT / "requirements.lock").read_text())}


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_declared_requirement_is_locked_at_a_version_it_allows():
    pins = locked()
    wrong = {
        str(requirement): pins.get(canonicalize_name(requirement.name))
        for requirement in declared()
        if pins.get(canonicalize_name(requirement.name)) not in requirement.specifier
    }
    assert not wrong, f"pyproject.toml and requirements.lock disagree (run make lock): {wrong}"


def test_every_locked_package_carries_a_hash():
    entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements.lock").read_text())
    unhashed = [entry.split()[0] for entry in entries if PIN.match(entry) and "--hash=sha256:" not in entry]
    assert not unhashed


def test_the_installed_declared_packages_are_the_locked_versions():
    """What the tests run on is what a fresh clone installs (a TORCH= override is the one allowed exception)."""
    pins = locked()
    installed = {
        requirement.name: metadata.version(requirement.name)
        for requirement in declared()
        if canonicalize_name(requirement.name) not in {"torch", "torchvision"}
    }
    assert {name: version for name, version in installed.items() if pins[canonicalize_name(name)] != version} == {}
