"""`POST /v1/detokenize`: the body logic, without HTTP.

The API handler authenticates the agent, derives its scope and its policy's `reveal` types, and
calls `detokenize_request`; it audits the returned summary (counts and types, never values). When
tokens were left in place, the reply says how many of each type and why, under `withheld`
(`{"unknown": {"EMAIL_ADDRESS": 2}, "type_not_revealable": {"PERSON": 1}}`), so a caller can tell
a policy limit from a stale token without any value being shown.
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
        return _with_withheld({"text": text}, summary), summary
    data, summary = await detokenizer.restore_json(payload["json"], scope, reveal)
    return _with_withheld({"json": data}, summary), summary


def _with_withheld(reply: dict[str, Any], summary: RevealSummary) -> dict[str, Any]:
    if summary.withheld_by:
        reply["withheld"] = {reason: dict(sorted(by.items())) for reason, by in sorted(summary.withheld_by.items())}
    return reply
