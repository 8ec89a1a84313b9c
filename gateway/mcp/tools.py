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
from collections import Counter
from collections.abc import Callable
from typing import Any

PIN_PREFIX = "sha256:"
# Tools one page of a list may hold: each shown one costs a pin check (a store write when new) and
# an audit record when new or changed, so one server's list must not cost unbounded work and disk.
MAX_LISTED_TOOLS = 1000


class TooManyTools(ValueError):
    """A page lists more tools than the gateway checks; the message is safe to show."""


def definition_digest(tool: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the tool's name, description and input schema (what the
    model reads and what the arguments must fit); annotations and titles are presentation."""
    definition = {"name": tool.get("name"), "description": tool.get("description"), "inputSchema": tool.get("inputSchema")}
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return PIN_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


def filter_list(result: Any, keep: Callable[[dict[str, Any]], bool]) -> Any:
    """A `tools/list` result with only the tools `keep` accepts; `nextCursor` and the rest pass, so
    a paginated list is cut page by page. A result of another shape lists nothing.

    A name listed twice on one page is shown in neither form: which definition a client keeps is
    the client's choice, so a benign first one could front for a hostile second one."""
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return {"tools": []}
    if len(result["tools"]) > MAX_LISTED_TOOLS:
        raise TooManyTools(f"the MCP server's tool list has more than {MAX_LISTED_TOOLS} tools on one page")
    named = [t for t in result["tools"] if isinstance(t, dict) and isinstance(t.get("name"), str)]
    counts = Counter(t["name"] for t in named)
    return {**result, "tools": [t for t in named if counts[t["name"]] == 1 and keep(t)]}
