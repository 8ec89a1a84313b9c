"""`POST /v1/detokenize`: the body logic, without HTTP.

The API handler authenticates the agent, derives its scope and its policy's `reveal` types, and
calls `detokenize_request`; it audits the returned summary (counts and types, never values).
Malformed bodies are refused with `malformed_body`; a vault failure propagates as
`StoreUnavailable` for the handler to map to `store_unavailable`.
"""

from __future__ import annotations

from typing import Any

from dlp.inbound import Detokenizer, RevealSummary
from gateway.errors import Refusal


async def detokenize_request(
    payload: Any, detokenizer: Detokenizer, scope: str, reveal: frozenset[str]
) -> tuple[dict[str, Any], RevealSummary]:
    """`{"text": str}` or `{"json": any}` -> the same shape with the caller's tokens restored."""
    if not isinstance(payload, dict) or len(payload) != 1 or not ({"text", "json"} & payload.keys()):
        raise Refusal("malformed_body", 'body must be an object with exactly one key, "text" or "json"')
    if "text" in payload:
        if not isinstance(payload["text"], str):
            raise Refusal("malformed_body", '"text" must be a string')
        text, summary = await detokenizer.restore_text(payload["text"], scope, reveal)
        return {"text": text}, summary
    data, summary = await detokenizer.restore_json(payload["json"], scope, reveal)
    return {"json": data}, summary
