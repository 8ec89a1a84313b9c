"""Seeing and stopping: traces (`tracing`, loaded only when configured), SIEM events (`ocsf`,
`export`) and behaviour baselines (`baseline`). Quarantine lives beside revocations
(`gateway.identity.quarantine`), in the same store.

This package's own namespace stays free of the OpenTelemetry SDK: the trace headers are parsed here
so that forwarding a traceparent costs no import when tracing is off.
"""

from __future__ import annotations

import re

TRACE_HEADERS = ("traceparent", "tracestate")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def traceparent_ids(header: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a W3C traceparent (version 00, non-zero ids), or None
    for anything else: an agent's header is untrusted and passes only in this exact form."""
    m = _TRACEPARENT.fullmatch(header.strip()) if header and len(header) <= 64 else None
    if m is None:
        return None
    trace_id, span_id = int(m.group(1), 16), int(m.group(2), 16)
    return (trace_id, span_id, int(m.group(3), 16)) if trace_id and span_id else None
