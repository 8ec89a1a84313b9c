"""Item 15 through the real gateway: every state file owner-only (SQLite's -wal/-shm included, an
old 0755/0644 state dir tightened and logged), and refusals without a token aggregated per source
so they cannot fill the audit log, while every record of an authenticated call is kept."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import httpx

from gateway.audit.noise import IDENTITY_CODES
from gateway.telemetry.ocsf import PHASES
from tests.clients import basic, client, raw_connect
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

EMAIL = "jane.doe@example.com"


def loose(state: Path) -> list[str]:
    """Every path under `state` (and `state` itself) that anyone but the owner can use."""
    paths = [state, *state.rglob("*")]
    return [f"{p} {oct(stat.S_IMODE(p.lstat().st_mode))}" for p in paths if not p.is_symlink() and p.lstat().st_mode & 0o077]


def exercise(gw: GatewayProcess) -> None:
    """Touch every store: a tokenized call (vault), an approval request, a revocation, the audit log."""
    with client(gw, gw.token(sub="perm-1", scopes=("*",))) as c:
        assert c.post("https://api.openai.com/v1/embeddings", json={"model": "m", "input": f"mail {EMAIL}"}).status_code == 200
    gw.cli("token", "revoke", "--sub", "someone-else")


def test_a_fresh_state_dir_is_owner_only_with_wal_and_shm(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    old = os.umask(0o022)  # what a shell usually has: the gateway must not depend on the caller's
    try:
        gw = make_gateway(vendor_settings(pki, vendor), name="fresh")
        exercise(gw)
        names = {p.name for p in gw.state_dir.rglob("*")}
        assert {"audit.jsonl", "revocations.sqlite", "approvals.sqlite", "signing-key.pem"} <= names, names
        assert any(n.endswith("-wal") for n in names) and any(n.endswith("-shm") for n in names), names
        assert loose(gw.state_dir) == []  # while running: the WAL and SHM files exist now
    finally:
        os.umask(old)


def test_an_existing_loose_state_dir_is_tightened_and_logged(make_gateway, pki: PKI, vendor: FakeVendor, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        state = tmp_path / "old" / "state"
        (state / "ca").mkdir(parents=True)
        os.chmod(state, 0o755)
        for name in ("approvals.sqlite", "revocations.sqlite"):  # as an older version left them: 0644 with WAL files
            db = sqlite3.connect(state / name)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE leftover (x)")
            db.commit()
            (state / f"{name}-wal").write_bytes(b"")
            (state / f"{name}-shm").write_bytes(b"")
        (state / "notes.txt").write_text("copied in with cp")
        assert len(loose(state)) >= 7
        gw = make_gateway(vendor_settings(pki, vendor), name="old")
        exercise(gw)
        assert loose(gw.state_dir) == []
    finally:
        os.umask(old)
    log = gw.log_file.read_text()
    assert "readable by others" in log and "owner-only" in log, log[-2000:]


def test_unauthenticated_refusals_are_aggregated_and_authenticated_ones_all_kept(
    make_gateway, pki: PKI, vendor: FakeVendor, tmp_path: Path
) -> None:
    siem = tmp_path / "siem" / "ocsf.jsonl"
    gw = make_gateway(vendor_settings(pki, vendor, audit={"export": [{"kind": "ocsf", "to": f"file:{siem}"}]}), name="noise")
    member = gw.token(sub="member-1", role="finance", scopes=("stripe:*",))
    sent, kept = 0, []
    started = time.monotonic()
    with httpx.Client(timeout=10) as api:
        for i in range(300):
            auth = {} if i % 2 else {"Authorization": "Bearer not-a-token"}
            assert api.get(f"{gw.api_url}/v1/decisions", headers=auth).status_code == 401
            sent += 1
            if i % 3 == 0:
                sock, resp = raw_connect(gw, "api.stripe.com", None if i % 2 else basic("garbage"))
                sock.close()
                sent += 1
            if i % 15 == 0:  # authenticated refusals: not an admin; a host no connector claims
                r = api.get(f"{gw.api_url}/v1/decisions", headers={"Authorization": f"Bearer {member}"})
                assert r.status_code == 403
                kept.append(r.headers["x-egress-decision-id"])
                sock, resp = raw_connect(gw, "unclaimed.example", basic(member))
                sock.close()
                kept.append(resp.headers["x-egress-decision-id"])
    elapsed = time.monotonic() - started
    gw.stop()
    records = gw.audit()
    ids = {r.get("decision_id") for r in records}
    assert all(d in ids for d in kept), "an authenticated refusal's record was dropped"
    anonymous = [r for r in records if r.get("code") in IDENTITY_CODES or r.get("phase") == "suppressed"]
    written = [r for r in anonymous if r.get("phase") != "suppressed"]
    summaries = [r for r in anonymous if r.get("phase") == "suppressed"]
    assert len(written) + sum(r["suppressed"]["count"] for r in summaries) == sent  # every refusal accounted for
    assert len(written) + len(summaries) <= 2 * (int(elapsed) + 2), (len(written), len(summaries), elapsed)
    assert {r["client"] for r in anonymous} == {"127.0.0.1"}
    assert {"identity_missing", "identity_invalid"} <= {c for r in summaries for c in r["suppressed"]["codes"]}
    # The SIEM gets what the audit log holds, not the flood: its queue stays the agents'.
    events = [json.loads(line) for line in siem.read_bytes().splitlines()]
    exported = {e["unmapped"]["decision_id"] for e in events}
    assert all(d in exported for d in kept[1::2])  # the refused CONNECTs (API refusals are not HTTP activity)
    anonymous_events = sorted(e["unmapped"]["decision_id"] for e in events if e["unmapped"].get("code") in IDENTITY_CODES)
    assert anonymous_events == sorted(r["decision_id"] for r in written if r.get("phase") in PHASES)
