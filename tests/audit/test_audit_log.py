"""The audit log: clean verify, every tampering kind, restart, torn lines, SIGKILL, report."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.log import MAX_LINE, AuditError, AuditLog, record_hash, verify
from gateway.policy.report import format_report, report_file

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()


def make_log(path: Path, n: int = 25, sign_every: int = 10) -> None:
    log = AuditLog(path, KEY, sign_every=sign_every)
    for i in range(n):
        log.write({"type": "decision", "i": i, "sub": f"agent-{i % 3}"})
    log.close()


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def rewrite(path: Path, new: list[bytes]) -> None:
    path.write_bytes(b"".join(new))


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    p = tmp_path / "audit" / "audit.jsonl"
    make_log(p)
    return p


def test_clean_log_verifies(log_path: Path) -> None:
    r = verify(log_path, PUB)
    assert r.ok and r.records == 25 and r.unsigned_tail == 0 and not r.torn_tail, r
    # 25 records + signatures after 10, 20 and at close
    assert r.last_seq == 28 and r.signed_seq == 27
    first = json.loads(lines(log_path)[0])
    assert first["seq"] == 1 and first["prev"] == "0" * 64 and first["hash"] == record_hash(first)


def test_wrong_key_fails(log_path: Path) -> None:
    r = verify(log_path, Ed25519PrivateKey.generate().public_key())
    assert not r.ok and "unknown key" in (r.error or "") and r.bad_line == 11


def test_changed_record(log_path: Path) -> None:
    ls = lines(log_path)
    ls[4] = ls[4].replace(b'"i":4', b'"i":5')
    rewrite(log_path, ls)
    r = verify(log_path, PUB)
    assert not r.ok and r.bad_seq == 5 and r.bad_line == 5 and "was changed" in (r.error or "")


def test_deleted_record(log_path: Path) -> None:
    ls = lines(log_path)
    del ls[6]
    rewrite(log_path, ls)
    r = verify(log_path, PUB)
    assert not r.ok and r.bad_line == 7 and "expected seq 7" in (r.error or "")


def test_inserted_record(log_path: Path) -> None:
    ls = lines(log_path)
    forged = {"type": "decision", "i": 99, "seq": 4, "prev": json.loads(ls[2])["hash"]}
    forged["hash"] = record_hash(forged)
    ls.insert(3, json.dumps(forged, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    rewrite(log_path, ls)
    r = verify(log_path, PUB)
    assert not r.ok and r.bad_line == 5 and "deleted, inserted or reordered" in (r.error or "")


def test_reordered_records(log_path: Path) -> None:
    ls = lines(log_path)
    ls[2], ls[3] = ls[3], ls[2]
    rewrite(log_path, ls)
    r = verify(log_path, PUB)
    assert not r.ok and r.bad_line == 3 and r.bad_seq == 4


def test_rewritten_suffix_breaks_the_next_signature(log_path: Path) -> None:
    """An attacker who recomputes every hash after a change still cannot sign."""
    ls = [json.loads(x) for x in lines(log_path)]
    ls[12]["i"] = 1000
    prev = ls[11]["hash"]
    for rec in ls[12:]:
        rec["prev"] = prev
        rec["hash"] = record_hash(rec)
        prev = rec["hash"]
    rewrite(log_path, [json.dumps(x, sort_keys=True, separators=(",", ":")).encode() + b"\n" for x in ls])
    r = verify(log_path, PUB)
    assert not r.ok and r.bad_line == 22 and "bad signature" in (r.error or "")
    assert "records after seq 10" in (r.error or "")


def test_truncated_mid_line_verifies_up_to_the_last_whole_record(log_path: Path) -> None:
    data = log_path.read_bytes()
    log_path.write_bytes(data[:-40])
    r = verify(log_path, PUB)
    assert r.ok and r.torn_tail and r.last_seq == 27 and r.signed_seq == 21 and r.unsigned_tail == 5
    assert "5 records after the last signed head, expected while running" in str(r)


def test_reopen_continues_the_chain_after_a_torn_line(log_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log_path.write_bytes(log_path.read_bytes()[:-40])
    log = AuditLog(log_path, KEY, sign_every=10)  # cuts the torn line, seals what was there
    assert "torn last line" in caplog.text
    log.write({"type": "decision", "i": "after restart"})
    log.close()
    r = verify(log_path, PUB)
    assert r.ok and not r.torn_tail and r.records == 26 and r.unsigned_tail == 0


def test_reserved_fields_are_refused(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl", KEY)
    for bad in ({"seq": 1}, {"hash": "x"}, {"prev": "x"}, {"type": "signature"}):
        with pytest.raises(ValueError):
            log.write(bad)
    log.close()


WRITER = """
import sys, time
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from gateway.audit.log import AuditLog
key = load_pem_private_key(Path(sys.argv[2]).read_bytes(), None)
log = AuditLog(Path(sys.argv[1]), key, sign_every=50)
print("ready", flush=True)
i = 0
while True:
    log.write({"type": "decision", "i": i, "pad": "x" * (i % 3000)})
    i += 1
"""


def test_sigkill_mid_write_leaves_a_verifiable_log(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key_file = tmp_path / "key.pem"
    key_file.write_bytes(KEY.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path = tmp_path / "audit.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(key_file)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    r = verify(path, PUB)
    assert r.ok and r.records > 100, r
    AuditLog(path, KEY).close()
    assert verify(path, PUB).ok


def test_policy_report_summarises_would_deny(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY)
    finding = {"code": "param_violation", "rule": "capped", "message": "amount 50 exceeds max 10"}
    for sub in ("a", "a", "b"):
        log.write({"type": "decision", "sub": sub, "decision": "allow", "would_deny": [finding]})
    log.write({"type": "decision", "sub": "a", "decision": "allow"})
    log.write({"type": "decision", "sub": "c", "decision": "allow",
               "would_deny": [{"code": "policy_denied", "rule": None, "message": "no rule"}]})
    log.close()
    rep = report_file(path)
    assert [(r.sub, r.rule, r.code, r.count) for r in rep.rows] == [
        ("a", "capped", "param_violation", 2),
        ("b", "capped", "param_violation", 1),
        ("c", "(no rule: default deny)", "policy_denied", 1),
    ]
    assert "AGENT" in format_report(rep)


def test_many_writes_with_periodic_signatures_verify(tmp_path: Path) -> None:
    """2000 records signed every 100: 20 signature records, and the whole log verifies (cost is in make bench)."""
    log = AuditLog(tmp_path / "a.jsonl", KEY, sign_every=100)
    record = {"type": "decision", "sub": "fin-01", "connector": "stripe", "action": "create_payment_intent",
              "decision": "allow", "policy_version": "0" * 16, "rules": ["finance-payments"]}
    for _ in range(2000):
        log.write(record)
    log.close()
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    # every 100, and the closing one at close (which follows the 20th with nothing between)
    assert sum('"type":"signature"' in line for line in lines) == 21
    assert verify(tmp_path / "a.jsonl", KEY.public_key()).ok


def test_a_huge_last_line_is_refused_at_open_in_bounded_memory(tmp_path: Path) -> None:
    """Opening the log reads back to the last whole record, one chunk at a time, each read copying
    what was read so far: a 40 MiB last line cost ~80 MiB and seconds (a 1 GiB one, hours). Past
    MAX_LINE the open stops and names the file."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY)
    log.write({"type": "decision"})
    log.close()
    with path.open("ab") as f:
        f.write(b'{"seq": 4, "pad": "' + b"x" * (40 * 2**20) + b'"}\n')
    tracemalloc.start()
    try:
        with pytest.raises(AuditError, match=f"the last line is longer than {MAX_LINE} bytes"):
            AuditLog(path, KEY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_LINE, peak


def test_a_signature_the_disk_refuses_holds_the_next_record_until_one_is_written(tmp_path: Path) -> None:
    """The gateway kept writing records past a failed signature (a moment of disk full), so its own
    log could hold more unsigned records than `verify` accepts and be called forged. Now a record
    that would go past `sign_every` unsigned ones is refused until the signature is written: a
    moment of no space costs no verifiable record, a lasting one refuses calls."""
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, KEY, sign_every=10)
    for i in range(9):
        log.write({"type": "decision", "i": i})
    line = path.stat().st_size // 9
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + line + 8, hard))  # the 10th record, not its signature
    try:
        log.write({"type": "decision", "i": 9})
        with pytest.raises(AuditError, match="cannot sign the head"):
            log.write({"type": "decision", "i": 10})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    for i in range(10, 25):
        log.write({"type": "decision", "i": i})
    log.close()
    result = verify(path, KEY.public_key())
    assert result.ok, result
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["i"] for r in records if r.get("type") == "decision"] == list(range(25))
