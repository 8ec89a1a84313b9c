"""Package faces that load on first use.

Each subpackage of `gateway` names its public face in its `__init__`; importing the package must
stay cheap, because the CLI imports a little of many packages and must not pay for the DLP models,
mitmproxy or uvicorn it does not use. `lazy_face` gives a package's `__getattr__` (PEP 562).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_face(package: str, face: dict[str, str]) -> Callable[[str], Any]:
    """`__getattr__` for `package`: name -> the module (relative to the package) that defines it."""

    def __getattr__(name: str) -> Any:
        module = face.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
