"""`audit verify`: a live log's unsigned tail is normal; `--strict` fails a stopped log cut anywhere."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.log import GENESIS, MAX_LINE, SIGN_EVERY, AuditError, AuditLog, hashed_line, record_hash, verify
from gateway.identity.tokens import load_or_create_key
from tests.clients import client, error_of
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

KEY = Ed25519PrivateKey.generate()


def closed_log(path: Path, n: int, sign_every: int) -> list[bytes]:
    log = AuditLog(path, KEY, sign_every=sign_every)
    for i in range(n):
        log.write({"type": "decision", "i": i})
    log.close()
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("sign_every", [1, 3, 10])
def test_strict_fails_every_cut_of_a_closed_log(tmp_path: Path, sign_every: int) -> None:
    """Every whole-line cut, including those landing right after a periodic signature."""
    path = tmp_path / "audit.jsonl"
    lines = closed_log(path, random.randint(12, 30), sign_every)
    whole = verify(path, KEY.public_key())
    assert whole.ok and whole.closed and whole.incomplete() is None, whole
    for keep in range(0, len(lines)):
        path.write_bytes(b"".join(lines[:keep]))
        r = verify(path, KEY.public_key())
        assert r.ok and not r.closed, (keep, r)  # the chain alone cannot tell
        assert r.incomplete(), (keep, r)


def test_a_gateway_that_decided_nothing_still_leaves_a_closed_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path, KEY).close()
    r = verify(path, KEY.public_key())
    assert r.ok and r.closed and r.records == 0 and r.incomplete() is None, r
    path.write_bytes(b"")
    assert verify(path, KEY.public_key()).incomplete() == "the log is empty"


def test_the_closing_mark_cannot_be_forged_onto_a_periodic_signature(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = closed_log(path, 25, 10)
    records = [json.loads(x) for x in lines]
    cut = max(i for i, rec in enumerate(records[:-1]) if rec.get("type") == "signature")
    forged = {**records[cut], "closing": True}
    forged["hash"] = record_hash(forged)  # the chain hash is unkeyed: an attacker can redo it
    path.write_bytes(b"".join(lines[:cut]) + json.dumps(forged).encode() + b"\n")
    r = verify(path, KEY.public_key())
    assert not r.ok and "bad signature" in (r.error or ""), r


def _unsigned_after_last_signature(path: Path) -> int:
    records = [json.loads(x) for x in path.read_bytes().splitlines()]
    last_sig = max((i for i, rec in enumerate(records) if rec.get("type") == "signature"), default=-1)
    return len(records) - 1 - last_sig


def test_verify_while_running_then_strict_after_shutdown(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    gw: GatewayProcess = make_gateway(vendor_settings(pki, vendor))
    token = gw.token(scopes=("stripe:retrieve_balance",))
    with client(gw, token) as c:
        for _ in range(random.randint(2, 6)):
            assert c.get("https://api.stripe.com/v1/balance").status_code == 200
    tail = _unsigned_after_last_signature(gw.audit_file)
    assert tail > 0
    live = gw.cli("audit", "verify")
    assert f"{tail} records after the last signed head, expected while running" in live.stdout
    assert "WARNING" not in live.stdout + live.stderr and live.stderr == ""
    running = gw.cli("audit", "verify", "--strict", check=False)
    assert running.returncode == 1 and f"{tail} records after the last signed head" in running.stderr

    assert gw.stop() == 0
    stopped = gw.cli("audit", "verify", "--strict")
    assert "closed at shutdown" in stopped.stdout and "after the last signed head" not in stopped.stdout

    lines = gw.audit_file.read_bytes().splitlines(keepends=True)
    gw.audit_file.write_bytes(b"".join(lines[: random.randint(1, len(lines) - 1)]))
    assert gw.cli("audit", "verify").returncode == 0
    cut = gw.cli("audit", "verify", "--strict", check=False)
    assert cut.returncode == 1 and cut.stderr.startswith("FAILED (--strict):"), cut.stderr


def test_a_full_disk_at_shutdown_leaves_the_log_unsealed_without_failing_the_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    full = Path("/dev/full")  # every write fails with ENOSPC: a real full disk, on demand
    if not full.exists():
        pytest.skip("no /dev/full")
    log = AuditLog(full, KEY)
    log.close()
    assert "cannot write the closing signature (OSError)" in caplog.text
    with pytest.raises(AuditError, match="closed"):
        log.write({"type": "decision"})


def _cli_verify(state: Path, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", "--state-dir", str(state), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def _signed_chain(state: Path, n: int) -> list[bytes]:
    """A closed chain of `n` records signed with the state dir's key, as lines."""
    path = state / "seed.jsonl"
    log = AuditLog(path, load_or_create_key(state / "signing-key.pem").private)
    for i in range(n):
        log.write({"type": "decision", "i": i})
    log.close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.unlink()
    return lines


HOSTILE_LINES = {
    "NaN": b'{"seq": NaN, "hash": "x"}',
    "Infinity in a field": b'{"seq": 4, "i": -Infinity}',
    "array nested 100000 deep": b"[" * 100_000 + b"]" * 100_000,
    "object nested 100000 deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "not UTF-8": b'{"seq": 4, "sub": "\xff\xfe"}',
    "binary": bytes(range(256)) * 4,
    "a list": b"[1, 2, 3]",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_LINES))
def test_a_hostile_line_is_named_without_a_traceback(tmp_path: Path, name: str) -> None:
    """A NaN (which canonical JSON refuses) or nesting past the parser's limit raised a ValueError
    or RecursionError out of `audit verify`: a traceback instead of the line's number."""
    lines = _signed_chain(tmp_path, 2)  # seq 1, 2, then the signature (3)
    (tmp_path / "audit.jsonl").write_bytes(b"".join(lines) + HOSTILE_LINES[name] + b"\n" + lines[0])
    done = _cli_verify(tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.endswith("\nFAILED at line 4: line 4 is not a JSON record\n") and "Traceback" not in done.stderr, \
        done.stderr  # the line before: the state dir's permissions, tightened


def test_a_line_of_100_mib_fails_in_the_memory_of_one_line(tmp_path: Path) -> None:
    """The whole file was read into memory (twice: the bytes and their split): a log of any size,
    or one line of 100 MiB, cost its size in RAM. Now one line at most, and past MAX_LINE it is named."""
    path = tmp_path / "audit.jsonl"
    lines = _signed_chain(tmp_path, 3)
    with path.open("wb") as f:
        f.writelines(lines)
        f.write(b'{"seq": 5, "pad": "' + b"x" * (100 * 2**20) + b'"}\n')
    tracemalloc.start()
    try:
        result = verify(path, load_or_create_key(tmp_path / "signing-key.pem").public)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not result.ok and result.bad_line == 5 and result.records == 3
    assert result.error == f"line 5 is longer than {MAX_LINE} bytes: not an audit record"
    assert peak < 3 * MAX_LINE, peak


def _forged(n: int, start: int = 0, prev: str = GENESIS) -> list[bytes]:
    """`n` records chained and hashed as the gateway would, by someone without its key."""
    out = []
    for i in range(start, start + n):
        line, prev = hashed_line({"type": "decision", "decision": "allow", "sub": "forger", "seq": i + 1, "prev": prev})
        out.append(line + b"\n")
    return out


def test_a_chain_rewritten_without_the_key_fails_past_one_signing_interval(tmp_path: Path) -> None:
    """A whole chain re-hashed without the key, its signatures left out, passed `audit verify`
    ("records after the last signed head, expected while running"): the gateway never writes more
    than SIGN_EVERY records between two signatures, so the record after that many is named. The
    SIGN_EVERY records after a genuine signature are what no chain can tell from a running log's
    tail (README: `--strict` on a stopped log)."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(_forged(SIGN_EVERY + 50)))
    done = _cli_verify(tmp_path, path)
    assert done.returncode == 1 and f"\nFAILED at line {SIGN_EVERY + 1}: " in done.stderr, done.stderr
    assert f"more than {SIGN_EVERY} records after the last signed head (seq 0)" in done.stderr

    genuine = _signed_chain(tmp_path, 2 * SIGN_EVERY + 30)  # periodic signatures at 101 and 202
    cut = genuine.index(next(x for x in genuine[::-1] if b'"type":"signature"' in x and b'"closing"' not in x)) + 1
    head = json.loads(genuine[cut - 1])
    path.write_bytes(b"".join(genuine[:cut] + _forged(SIGN_EVERY, head["seq"], head["hash"])))
    assert _cli_verify(tmp_path, path).returncode == 0  # within one interval: only --strict can tell
    path.write_bytes(b"".join(genuine[:cut] + _forged(SIGN_EVERY + 1, head["seq"], head["hash"])))
    over = _cli_verify(tmp_path, path)
    assert over.returncode == 1 and f"line {cut + SIGN_EVERY + 1}: " in over.stderr, over.stderr
    path.write_bytes(b"".join(genuine))
    assert "ok: 230 records" in _cli_verify(tmp_path, path).stdout


def test_a_log_deleted_under_the_running_gateway_refuses_every_call(make_gateway, pki: PKI, vendor: FakeVendor) -> None:  # type: ignore[no-untyped-def]
    """A rotation that deletes the file (instead of renaming it) left the gateway writing its
    records into a deleted file: every call let out, its records lost, nothing logged. A renamed
    log is still written (its records are kept), a deleted one refuses until a restart."""
    gw: GatewayProcess = make_gateway(vendor_settings(pki, vendor))
    with client(gw, gw.token(scopes=("stripe:retrieve_balance",))) as c:
        assert c.get("https://api.stripe.com/v1/balance").status_code == 200
        rotated = gw.state_dir / "rotated.jsonl"
        gw.audit_file.rename(rotated)
        kept = c.get("https://api.stripe.com/v1/balance")
        assert kept.status_code == 200 and kept.headers["x-egress-decision-id"].encode() in rotated.read_bytes()
        rotated.unlink()
        sent = len(vendor.received)
        refused = [c.get("https://api.stripe.com/v1/balance") for _ in range(3)]
        assert [(r.status_code, error_of(r)["code"]) for r in refused] == [(503, "store_unavailable")] * 3
        assert len(vendor.received) == sent
    assert gw.log_file.read_text().count("was deleted while the gateway runs") == 1
