"""`policy report` counts each shadow call once, though a call writes a decision and an outcome record."""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import Counter
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.log import AuditLog
from gateway.policy.report import DEFAULT_DENY, report_file
from tests.clients import client
from tests.fakes import PKI, REPO, FakeVendor, vendor_settings

KEY = Ed25519PrivateKey.generate()
FINDINGS = [
    {"code": "param_violation", "rule": "capped", "message": "amount exceeds max"},
    {"code": "approval_required", "rule": "big", "message": "amount > 100"},
    {"code": "policy_denied", "rule": None, "message": "no rule"},
]

# One call: its agent, the indexes of its findings, and whether it got an outcome record.
calls = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.sets(st.integers(0, len(FINDINGS) - 1)), st.booleans()),
    max_size=30,
)


@given(calls=calls, seed=st.integers(0, 2**32))
def test_each_call_counts_once_whatever_records_it_wrote(tmp_path_factory, calls, seed: int) -> None:
    path = tmp_path_factory.mktemp("report") / "audit.jsonl"
    records = []
    for sub, found, has_outcome in calls:
        base = {"sub": sub, "decision_id": f"dec_{uuid.uuid4().hex}", "decision": "allow",
                "would_deny": [FINDINGS[i] for i in sorted(found)]}
        records.append([{**base, "phase": "decision"}] + ([{**base, "phase": "outcome"}] if has_outcome else []))
    # Calls run concurrently: records of different calls interleave, a call's own stay in order.
    rng, log = random.Random(seed), AuditLog(path, KEY, sign_every=7)
    while records:
        pending = rng.choice(records)
        log.write(pending.pop(0))
        records = [r for r in records if r]
    log.close()

    expected = Counter(
        (sub, FINDINGS[i]["rule"] or DEFAULT_DENY, FINDINGS[i]["code"]) for sub, found, _ in calls for i in found
    )
    got = {(r.sub, r.rule, r.code): r.count for r in report_file(path).rows}
    assert got == dict(expected)


def test_records_without_a_decision_id_count_each(tmp_path: Path) -> None:
    """Older records (and hand-written ones) have no decision id: nothing to join on, so each counts."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, KEY)
    for _ in range(3):
        log.write({"sub": "a", "would_deny": [FINDINGS[0]]})
    log.close()
    assert [r.count for r in report_file(path).rows] == [3]


def test_shadow_calls_through_the_gateway_are_counted_once(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    gw = make_gateway(vendor_settings(pki, vendor, policies=str(REPO / "policies")))
    token = gw.token(sub="support-7", role="support", tenant="acme", scopes=("stripe:*",))
    n = random.randint(2, 5)
    with client(gw, token) as c:
        for _ in range(n):
            r = c.post("https://api.stripe.com/v1/customers", data={"description": "d" * 600})
            assert r.status_code == 200, r.text
        assert c.post("https://api.stripe.com/v1/customers", data={"description": "short"}).status_code == 200
    phases = Counter(rec["phase"] for rec in gw.audit() if rec.get("would_deny"))
    assert phases == {"decision": n, "outcome": n}, phases  # the double the report must not count
    out = gw.cli("policy", "report").stdout
    row = next(line for line in out.splitlines() if "support-customers" in line)
    assert re.split(r"\s+", row)[:4] == ["support-7", "support-customers", "param_violation", str(n)], out


def test_a_line_nested_past_the_parser_limit_is_skipped_not_a_traceback(tmp_path: Path) -> None:
    """`policy report` raised RecursionError out of json.loads on a line nested 100000 deep."""
    path = tmp_path / "audit.jsonl"
    finding = {"sub": "a", "decision_id": "dec_1", "would_deny": [FINDINGS[0]]}
    path.write_text(json.dumps(finding) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n" + '{"a":' * 100_000 + "1" + "}" * 100_000
                    + "\n")
    report = report_file(path)
    assert (report.records, report.skipped) == (1, 2)
    assert [(r.sub, r.rule, r.count) for r in report.rows] == [("a", "capped", 1)]
