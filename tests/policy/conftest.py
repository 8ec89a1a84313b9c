"""Fixtures for the policy tests: a policy directory and a loader into it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.policy.engine import PolicySet
from gateway.policy.load import load_policy_set
from tests.policy.helpers import lookup, write


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    return d


@pytest.fixture
def load(policy_dir: Path) -> Callable[..., PolicySet]:
    """Write files (name -> YAML text) into the policy dir and load it."""

    def _load(**files: str) -> PolicySet:
        for name, text in files.items():
            write(policy_dir, f"{name}.yaml", text)
        return load_policy_set(policy_dir, lookup)

    return _load
