"""A tool's definition as the rug-pull guard pins it, and a `tools/list` result cut to what the
caller may call.

A server that changes what a tool says it does (its description, which the model reads as
instructions, or its input schema) after it was approved is the "rug pull": the hash of the
definition is pinned the first time it is seen, and a definition with another hash is hidden and
refused until an admin accepts it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

PIN_PREFIX = "sha256:"


def definition_digest(tool: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the tool's name, description and input schema (what the
    model reads and what the arguments must fit); annotations and titles are presentation."""
    definition = {"name": tool.get("name"), "description": tool.get("description"), "inputSchema": tool.get("inputSchema")}
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return PIN_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


def filter_list(result: Any, keep: Callable[[dict[str, Any]], bool]) -> Any:
    """A `tools/list` result with only the tools `keep` accepts; `nextCursor` and the rest pass, so
    a paginated list is cut page by page. A result of another shape lists nothing."""
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return {"tools": []}
    return {**result, "tools": [t for t in result["tools"] if isinstance(t, dict) and isinstance(t.get("name"), str) and keep(t)]}
