"""Whether the respond step can read a vendor's answer at all, and its body decoded within a bound.

The scrubber and the detokenizer read plain bytes, so the gateway asks every vendor for an
uncompressed answer (`accept-encoding: identity`). A vendor may compress anyway, and the agent's
client decodes what the gateway passed on: an encoding the gateway did not decode (`gzip, gzip`,
`x-gzip`, any encoded event stream) would carry an echoed credential past the scrubber. So one
gzip or deflate layer is decoded here, never past `limit` bytes (a few hundred KiB of gzip inflate
to gigabytes), and the agent gets the plain body it asked for; any other encoding is refused.
Brotli and zstd are refused too: their decoders here cannot stop at a size.

An informational answer (1xx, 101 included) is refused as well: the gateway carries no protocol
switch, and mitmproxy would take a 103 for the final answer and leave the real one on the
connection for the agent's next request.

Each refusal says whose it is for the circuit breaker: a compressed body that does not decode is
the vendor's failure; an answer refused for its form or size is the gateway's (`gateway_side`).
"""

from __future__ import annotations

import gzip
import io
import zlib

from gateway.errors import Refusal

DECODED = ("gzip", "deflate")  # the Content-Encodings decoded (one layer), besides identity
_READ = 64 * 1024


def refused_head(status: int, content_encoding: str, streamed: bool) -> Refusal | None:
    """The refusal of an answer whose head already shows it cannot be checked, or None."""
    if status < 200:
        return _unread("answered with an informational or protocol-switching status, which the gateway does not carry")
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if streamed or encoding not in DECODED:
        return _unread("compressed its answer in a way the gateway cannot check (it asks for an uncompressed one)")
    return None


def decoded(raw: bytes, content_encoding: str, limit: int) -> bytes | Refusal:
    """The plain body of an answer (one gzip or deflate layer), or the refusal if it breaks `limit`
    bytes once decoded or is not valid compressed data."""
    encoding = content_encoding.strip().lower()
    try:
        if encoding == "gzip":
            body = _read(gzip.GzipFile(fileobj=io.BytesIO(raw)), limit)
        elif encoding == "deflate":
            body = _inflate(raw, limit)
        else:
            return raw
    except (OSError, EOFError, zlib.error):
        return _failed("sent a compressed answer that does not decode")
    if body is None:
        return _unread(f"sent an answer that exceeds max_response_body ({limit} bytes) once decoded")
    return body


def _read(reader: io.BufferedIOBase, limit: int) -> bytes | None:
    parts, size = [], 0
    while piece := reader.read(_READ):
        size += len(piece)
        if size > limit:
            return None
        parts.append(piece)
    return b"".join(parts)


def _inflate(raw: bytes, limit: int) -> bytes | None:
    """Deflate as servers send it: zlib-wrapped, or raw (as mitmproxy and browsers accept)."""
    try:
        inflater = zlib.decompressobj(zlib.MAX_WBITS)
        body = inflater.decompress(raw, limit + 1)
    except zlib.error:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        body = inflater.decompress(raw, limit + 1)
    return None if len(body) > limit else body


def _failed(what: str) -> Refusal:
    """The vendor broke HTTP: the circuit breaker counts it."""
    return Refusal("upstream_failed", f"the vendor {what}")


def _unread(what: str) -> Refusal:
    """A well-formed answer the gateway does not relay: not the vendor's failure (`gateway_side`)."""
    return Refusal("upstream_failed", f"the vendor {what}", gateway_side=True)
