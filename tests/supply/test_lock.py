"""requirements.lock and pyproject.toml agree: every dependency pyproject names (the base set, every
extra, the build system's) is pinned, with hashes, to a version its range allows, for Python 3.11
and 3.12 on Linux x86_64 (the machines `make setup` installs on). A dependency added to pyproject
without `make lock` fails here, before a fresh machine's `make setup` does."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.fakes import REPO

ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$")


@dataclass(frozen=True)
class Pin:
    version: Version
    marker: Marker | None
    hashes: int


def linux_x86_64(python: str) -> dict[str, str]:
    return {
        "python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux", "os_name": "posix",
        "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
        "platform_python_implementation": "CPython", "extra": "",
    }


def read_lock() -> dict[str, list[Pin]]:
    """Name -> its pins (several when markers pick different versions per Python)."""
    pins: dict[str, list[Pin]] = {}
    lines = (REPO / "requirements.lock").read_text().splitlines()
    for i, line in enumerate(lines):
        m = ENTRY.match(line)
        if m is None:
            continue
        hashes = 0
        for follow in lines[i + 1:]:
            if not follow.startswith("    --hash=sha256:"):
                break
            hashes += 1
        marker = Marker(m.group("marker")) if m.group("marker") else None
        pins.setdefault(canonicalize_name(m.group("name")), []).append(Pin(Version(m.group("version")), marker, hashes))
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = list(project["project"]["dependencies"]) + list(project["build-system"]["requires"])
    for extra in project["project"]["optional-dependencies"].values():
        names += extra
    return [Requirement(r) for r in names]


def test_the_lock_is_written_by_make_lock_and_every_pin_has_hashes() -> None:
    text = (REPO / "requirements.lock").read_text()
    assert text.splitlines()[1].strip() == "#    make lock"
    pins = read_lock()
    assert len(pins) >= 100
    assert [name for name, ps in pins.items() if any(p.hashes == 0 for p in ps)] == []
    assert "-e " not in text and "file://" not in text  # nothing from a local path: only the registry


@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_every_dependency_in_pyproject_is_pinned_within_its_range(python: str) -> None:
    env = linux_x86_64(python)
    pins = read_lock()
    problems = []
    for req in declared():
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        chosen = [p for p in pins.get(canonicalize_name(req.name), []) if p.marker is None or p.marker.evaluate(env)]
        if len(chosen) != 1:
            problems.append(f"{req.name}: {len(chosen)} pins apply on Python {python} (run `make lock`)")
        elif not req.specifier.contains(chosen[0].version, prereleases=True):
            problems.append(f"{req.name}: pinned {chosen[0].version}, pyproject wants {req.specifier} (run `make lock`)")
    assert problems == []


def test_mitmproxy_is_pinned_per_python_as_the_code_supports() -> None:
    """mitmproxy 11 on 3.11 (this machine), 12 on 3.12+: the code must work on both."""
    pins = read_lock()["mitmproxy"]
    by_python = {py: [p.version.major for p in pins if p.marker is None or p.marker.evaluate(linux_x86_64(py))]
                 for py in ("3.11", "3.12")}
    assert by_python == {"3.11": [11], "3.12": [12]}
