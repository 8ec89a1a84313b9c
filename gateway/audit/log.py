"""The tamper-evident audit log: one JSON line per record, hash-chained, the head signed with Ed25519.

Every line is the canonical JSON (sorted keys, no spaces) of a record carrying `seq` (1, 2, ...),
`prev` (the `hash` of the previous line; 64 zeros for the first) and `hash` (SHA-256 of the
canonical JSON of the record without `hash`). Every `sign_every` records, when the log is opened
on an existing chain, and at `close()`, a record of `type: "signature"` is appended: it is chained
like any other and carries `sig`, an Ed25519 signature of `"<seq of head>:<hash of head>"` by the
gateway's key, and `key_id` (the first 16 hex digits of SHA-256 of the raw public key). The
signature over the head commits to every record before it. The signature written by `close()`
also carries `closing: true` and signs `"<seq>:<hash>:closing"`, so the flag cannot be added to a
periodic signature without the key: a log that ends in a closing signature was complete when the
gateway stopped.

`verify` names the first bad record: a changed record breaks its own hash; a deleted, inserted or
moved one breaks `seq` or `prev`; a rewritten suffix (hashes recomputed) breaks the next signature.
Records after the last signature are only hash-chained: truncating them cannot be detected from
the records alone, which is why the log is signed often; `VerifyResult.unsigned_tail` says how many
there are (expected while the gateway runs), and more than `SIGN_EVERY` of them fail: the gateway
never writes more (a record that would go past them waits for a signature that is written), so
they are a chain re-hashed without the key. For a stopped gateway's log,
`strict` also demands the closing signature: a tail cut after any earlier signature, or a crash, fails it.

Crashes: each record is one `write(2)` of a whole line on an `O_APPEND` descriptor, so after
SIGKILL the file holds whole records and at most one torn last line. `open` cuts a torn line off
(logging it) and continues the chain; `verify` ignores a torn last line and reports it. A write
that fails (disk full, file size limit) is cut back to the last whole record and raised, so the
caller refuses the call and the chain continues cleanly once space returns.

fsync policy: by default the file is fsynced at every signature and at `close()`, not per record.
Measured here: ~45 µs per record (JSON, SHA-256, the amortised signature and fsync every 100),
~1 ms per record with an fsync each (more on many real disks), too much for the event loop on
every call. A process crash loses nothing (the kernel has the data); a power loss can lose the
records since the last signature. `fsync_each_record=True` trades latency for that.

The log is written from the proxy's event loop and may be written from threads (the API); a lock
keeps `seq`/`prev` consistent. Callers must never put raw PII or secrets in a record.

Workers (`run --workers N`): each worker appends to its own chain, `audit.<replica>.<worker>.jsonl`,
and stamps `replica` and `worker` (`origin`) on every record of it, signatures included. One chain
per writer keeps each chain's order its writer's order, with no lock between processes and no
sequencer to lose records when it dies; a worker restarted after a crash continues its chain.
`audit verify DIR` checks every chain of a directory.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.errors import StoreUnavailable

log = logging.getLogger(__name__)

GENESIS = "0" * 64
SIGN_EVERY = 100  # records between two signatures of the head
MAX_LINE = 16 * 1024 * 1024  # no record comes near: a request head, its path included, is at most 64 KiB
RESERVED = frozenset({"seq", "prev", "hash"})
SIGNATURE = "signature"
_TAIL_CHUNK = 64 * 1024


class AuditError(StoreUnavailable):
    """The existing log cannot be continued (its last whole line is not a record)."""


def canonical(record: dict[str, Any]) -> bytes:
    """Sorted keys, no spaces, ASCII only: a lone surrogate (from a path that was not UTF-8) is
    escaped like any other character, so no record can fail to encode and go unwritten."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a record without its `hash` field."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def hashed_line(record: dict[str, Any]) -> tuple[bytes, str]:
    """The canonical JSON of `record` with its `hash` (`record_hash`) set, and that hash, from one
    encoding: the keys sort around "hash", so the line is the unhashed encoding with the field put
    in its place. Two encodings of every record were a tenth of the audit log's cost."""
    head = canonical({k: v for k, v in record.items() if k < "hash"})[:-1]  # '{' and what sorts before
    tail = canonical({k: v for k, v in record.items() if k > "hash"})[1:]  # what sorts after, and '}'
    before, after = (b"," if len(head) > 1 else b""), (b"," if len(tail) > 1 else b"")
    digest = hashlib.sha256(head + (b"," if before and after else b"") + tail).hexdigest()
    return head + before + b'"hash":"' + digest.encode() + b'"' + after + tail, digest


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _signed_message(head_seq: int, head_hash: str, closing: bool = False) -> bytes:
    return f"{head_seq}:{head_hash}{':closing' if closing else ''}".encode()


class AuditLog:
    """Appends records to the log at `path`, continuing an existing chain."""

    def __init__(
        self,
        path: Path,
        signing_key: Ed25519PrivateKey,
        sign_every: int = SIGN_EVERY,
        fsync_each_record: bool = False,
        origin: dict[str, str | int] | None = None,
    ) -> None:
        if sign_every < 1:
            raise ValueError("sign_every must be at least 1")
        self.path = path
        self.sign_every = sign_every
        self.fsync_each_record = fsync_each_record
        self._origin = dict(origin or {})
        self._key = signing_key
        self._key_id = key_id(signing_key.public_key())
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            last = _recover(self._fd, path)
        except BaseException:
            os.close(self._fd)
            raise
        self._size = os.fstat(self._fd).st_size  # the one writer of the file: kept, not asked each record
        self._seq = int(last["seq"]) if last else 0
        self._prev = str(last["hash"]) if last else GENESIS
        self._unsigned = 0
        self._deleted = False
        if last is not None and last.get("type") != SIGNATURE:
            self._sign()

    @property
    def seq(self) -> int:
        return self._seq

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append one record (a JSON object); adds `ts` if absent, then `seq`, `prev`, `hash`.

        Returns the record as the chain holds it without the chain's own fields (`ts` and the
        origin added): what every view shows, so a record read back from a chain (another worker's,
        `gateway.audit.feed`) and one this process wrote look the same."""
        bad = RESERVED & record.keys()
        if bad or record.get("type") == SIGNATURE:
            raise ValueError(f"audit record uses reserved fields: {sorted(bad) or ['type']}")
        with self._lock:
            if self._fd < 0:
                raise AuditError("audit log is closed")
            if os.fstat(self._fd).st_nlink == 0:
                # Deleted under the running gateway (a log rotation that removes instead of renaming):
                # records would go to a file no one can read. A renamed file is still written.
                if not self._deleted:
                    log.error("audit log %s was deleted while the gateway runs: every call is refused until "
                              "it is restarted", self.path)
                self._deleted = True
                raise AuditError(f"{self.path} was deleted")
            if self._unsigned >= self.sign_every:
                # The last signature failed (disk full, a file size limit): no record goes past
                # `sign_every` unsigned ones, the bound `verify` holds a chain to, so this one waits
                # for a signature that is written (its call is refused until then).
                try:
                    self._sign()
                except OSError as e:
                    raise AuditError(f"{self.path}: cannot sign the head ({type(e).__name__})") from None
            body = {"ts": _now(), **record, **self._origin}
            self._append(body)
            if self.fsync_each_record:
                os.fsync(self._fd)
            self._unsigned += 1
            if self._unsigned >= self.sign_every:
                try:
                    self._sign()
                except OSError as e:
                    # The record is written; the signature is tried again before the next record.
                    log.warning("audit log %s: cannot sign the head (%s); retrying later", self.path, type(e).__name__)
        return {k: v for k, v in body.items() if k not in RESERVED}

    def close(self) -> None:
        """Write the closing signature (even right after a periodic one, or with no records at all:
        only it says the log is complete), fsync and close."""
        with self._lock:
            if self._fd < 0:
                return
            try:
                self._sign(closing=True)
            except OSError as e:
                # A full disk must not stop the shutdown; the log stays unsealed, which is what it is.
                log.warning("audit log %s: cannot write the closing signature (%s); `audit verify --strict` "
                            "will report the log unsealed", self.path, type(e).__name__)
            finally:
                os.close(self._fd)
                self._fd = -1

    def _sign(self, closing: bool = False) -> None:
        sig = self._key.sign(_signed_message(self._seq, self._prev, closing))
        record: dict[str, Any] = {
            **self._origin,
            "type": SIGNATURE,
            "ts": _now(),
            "head_seq": self._seq,
            "key_id": self._key_id,
            "sig": base64.b64encode(sig).decode(),
        }
        if closing:
            record["closing"] = True
        self._append(record)
        os.fsync(self._fd)
        self._unsigned = 0

    def _append(self, body: dict[str, Any]) -> None:
        body["seq"] = self._seq + 1
        body["prev"] = self._prev
        line, body["hash"] = hashed_line(body)
        data = line + b"\n"
        size = self._size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # A full disk can take part of the line: cut it off, so the file stays whole records
            # and the chain continues from the last one when space returns.
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                with contextlib.suppress(OSError):  # the file is not what was tracked: ask it again
                    self._size = os.fstat(self._fd).st_size
            raise
        self._size = size + len(data)
        self._seq, self._prev = body["seq"], body["hash"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _recover(fd: int, path: Path) -> dict[str, Any] | None:
    """The last whole record of the file, after cutting off a torn last line."""
    size = os.fstat(fd).st_size
    pos, buf = size, b""
    while True:
        start = max(0, pos - _TAIL_CHUNK)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        end = buf.rfind(b"\n")
        begin = buf.rfind(b"\n", 0, end) if end >= 0 else -1
        if begin >= 0 or pos == 0:
            break
        if size - pos > MAX_LINE + _TAIL_CHUNK:  # each chunk copied the buffer: a huge last line was quadratic
            raise AuditError(f"{path}: the last line is longer than {MAX_LINE} bytes, not an audit record; rotate the file")
    whole = pos + end + 1 if end >= 0 else 0
    if whole < size:
        log.warning("audit log %s: cutting off a torn last line (%d bytes)", path, size - whole)
        os.ftruncate(fd, whole)
    if end < 0:
        return None
    line = buf[begin + 1 : end]
    try:
        last = json.loads(line)
        int(last["seq"])
        str(last["hash"])
    except (ValueError, KeyError, TypeError):
        raise AuditError(f"{path}: the last line is not an audit record; rotate the file") from None
    return dict(last)


@dataclass(frozen=True)
class VerifyResult:
    """What `audit verify` found. `ok` is False with `bad_seq`/`bad_line` and `error` on tampering."""

    ok: bool
    records: int
    last_seq: int
    signed_seq: int  # seq of the last head covered by a valid signature (0: none)
    unsigned_tail: int  # records after that head (a running gateway, a crash, or truncation)
    torn_tail: bool  # the file ended in a partial line, ignored
    error: str | None = None
    bad_seq: int | None = None
    bad_line: int | None = None
    closed: bool = False  # the last record is the closing signature written at shutdown

    def __str__(self) -> str:
        if not self.ok:
            return f"FAILED at line {self.bad_line}: {self.error}"
        out = f"ok: {self.records} records, signed up to seq {self.signed_seq}"
        if self.unsigned_tail:
            out += (f"; {self.unsigned_tail} records after the last signed head, expected while running "
                    "(use --strict on a stopped gateway's log)")
        if self.torn_tail:
            out += "; a torn last line (crash mid-write) was ignored"
        if self.closed:
            out += "; closed at shutdown"
        return out

    def incomplete(self) -> str | None:
        """Why a stopped gateway's log is not provably whole (`--strict`), or None if it is."""
        if not self.ok:
            return None
        if self.torn_tail or self.unsigned_tail:
            return (f"{self.unsigned_tail} records after the last signed head (seq {self.signed_seq})"
                    f"{' and a torn last line' if self.torn_tail else ''}: the gateway is running, crashed, or "
                    "the tail was cut")
        if self.closed:
            return None
        if self.last_seq == 0:
            return "the log is empty"
        return (f"the log ends at a periodic signature (seq {self.last_seq}), not the one written at shutdown: "
                "the gateway is running, crashed, or the records after it were cut")


def _lines(path: Path) -> Iterator[tuple[bytes, bool]]:
    """The lines of the log, each with whether it ended in a newline (only a torn last line does
    not), read one at a time: a log of any size verifies in the memory of one line. A line longer
    than `MAX_LINE` is returned cut there, with no newline, so the caller names it."""
    with path.open("rb") as f:
        while raw := f.readline(MAX_LINE + 1):
            whole = raw.endswith(b"\n")
            yield (raw[:-1] if whole else raw), whole


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parsed(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The record of one line and its hash as recomputed, or None for a line that is no record:
    not JSON, NaN or Infinity (which no record can hold: canonical JSON refuses them), or nested
    past the parser's recursion limit."""
    try:
        rec = json.loads(raw, parse_constant=_reject_constant)
        return (rec, record_hash(rec)) if isinstance(rec, dict) else (None, None)
    except (ValueError, RecursionError):
        return None, None


def verify(
    path: Path, public_keys: Ed25519PublicKey | Iterable[Ed25519PublicKey], sign_every: int = SIGN_EVERY
) -> VerifyResult:
    """Check the chain and every signature of the log at `path`; stop at the first bad record.
    More than `sign_every` records after a signed head fail too: the gateway never writes more
    between two signatures, so such a run is a chain rewritten without the key, its signatures left out."""
    keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
    by_id = {key_id(k): k for k in keys}
    prev, seq, signed, records, unsigned = GENESIS, 0, 0, 0, 0
    torn = False

    def fail(lineno: int, bad_seq: int | None, error: str) -> VerifyResult:
        return VerifyResult(False, records, seq, signed, unsigned, torn, error, bad_seq, lineno)

    closed = False
    for lineno, (raw, whole) in enumerate(_lines(path), 1):
        if len(raw) > MAX_LINE:
            return fail(lineno, seq + 1, f"line {lineno} is longer than {MAX_LINE} bytes: not an audit record")
        if not whole:
            torn = True
            break
        rec, digest = _parsed(raw)
        if rec is None:
            return fail(lineno, seq + 1, f"line {lineno} is not a JSON record")
        rseq = rec.get("seq")
        where = f"record seq {rseq} (line {lineno})"
        if rec.get("hash") != digest:
            return fail(lineno, rseq, f"{where} was changed: its hash does not match its content")
        if rseq != seq + 1:
            return fail(
                lineno, rseq, f"{where}: expected seq {seq + 1}; records were deleted, inserted or reordered"
            )
        if rec.get("prev") != prev:
            return fail(lineno, rseq, f"{where} does not follow the previous record; records were deleted, "
                        "inserted or reordered")
        if rec.get("type") == SIGNATURE:
            problem = _check_signature(rec, seq, prev, by_id)
            if problem:
                return fail(lineno, rseq, f"{where}: {problem}; records after seq {signed} may have been altered")
            signed, unsigned, closed = seq, 0, rec.get("closing") is True
        else:
            closed = False
            records += 1
            unsigned += 1
            if unsigned > sign_every:
                return fail(lineno, rseq, f"{where}: more than {sign_every} records after the last signed head "
                            f"(seq {signed}), which the gateway never writes: records were forged or signatures removed")
        prev, seq = rec["hash"], rseq
    return VerifyResult(True, records, seq, signed, unsigned, torn, closed=closed)


def _check_signature(rec: dict[str, Any], seq: int, prev: str, keys: dict[str, Ed25519PublicKey]) -> str | None:
    if rec.get("head_seq") != seq:
        return "signature names the wrong head"
    key = keys.get(str(rec.get("key_id")))
    if key is None:
        return f"signed by unknown key {rec.get('key_id')!r}"
    try:
        message = _signed_message(seq, prev, rec.get("closing") is True)
        key.verify(base64.b64decode(str(rec.get("sig")), validate=True), message)
    except (InvalidSignature, ValueError):
        return "bad signature"
    return None
