"""The CLI glue: commands registered on an argparse parser, run as the real CLI will run them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.log import AuditLog
from gateway.cli.policy import add_approvals_commands, add_audit_commands, add_policy_commands
from gateway.policy.approvals import ApprovalStore
from tests.policy.helpers import lookup, write

KEY = Ed25519PrivateKey.generate()
POLICY = """
    version: 1
    subjects: {roles: [finance]}
    rules:
      - {connector: pay, actions: [create], params: {amount: {max: 500}}, approval: "amount > 100"}
"""


def parser(tmp_path: Path) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    add_policy_commands(sub, lookup=lambda a: lookup, policies_dir=lambda a: tmp_path / "policies",
                        audit_dir=lambda a: tmp_path)
    add_approvals_commands(sub, open_store=lambda a: ApprovalStore(tmp_path / "approvals.db"))
    add_audit_commands(sub, audit_dir=lambda a: tmp_path, public_keys=lambda a: [KEY.public_key()])
    return p


def run(tmp_path: Path, *argv: str) -> int:
    args = parser(tmp_path).parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    write(tmp_path / "policies", "f.yaml", POLICY)
    return tmp_path


def test_policy_check(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(home, "policy", "check") == 0
    write(home / "policies", "g.yaml", "version: 1\nsubjects: {roles: [x]}\nrules:\n  - {connector: nope, actions: [a]}\n")
    assert run(home, "policy", "check") == 1
    assert "g.yaml:4: unknown connector 'nope'" in capsys.readouterr().err
    assert run(home, "policy", "check", str(home / "policies" / "f.yaml")) == 0


def test_policy_test(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    req = home / "req.json"
    req.write_text(json.dumps({"connector": "pay", "action": "create", "params": {"amount": 50}}))
    assert run(home, "policy", "test", "--as", "finance", str(req)) == 0
    assert json.loads(capsys.readouterr().out)["decision"] == "allow"
    req.write_text(json.dumps({"connector": "pay", "action": "create", "params": {"amount": 900}}))
    assert run(home, "policy", "test", "--as", "finance", str(req)) == 1
    assert json.loads(capsys.readouterr().out)["code"] == "param_violation"


def test_approvals_list_approve_deny(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ApprovalStore(home / "approvals.db")
    a = store.request("acme", "fin-01", "pay", "create", "d1", {"amount": 150}, "needs approval")
    b = store.request("acme", "fin-01", "pay", "create", "d2", {"amount": 160}, "needs approval")
    assert run(home, "approvals", "list") == 0
    out = capsys.readouterr().out
    assert a.id in out and "amount=150" in out
    assert run(home, "approvals", "approve", a.id, "--by", "alice") == 0
    assert run(home, "approvals", "deny", b.id) == 0
    assert run(home, "approvals", "approve", b.id) == 1
    assert store.get(a.id).state == "approved" and store.get(a.id).decided_by == "alice"  # type: ignore[union-attr]
    capsys.readouterr()
    assert run(home, "approvals", "list", "--all", "--json") == 0
    states = {json.loads(line)["state"] for line in capsys.readouterr().out.splitlines()}
    assert states == {"approved", "denied"}


def test_audit_verify_and_policy_report(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog(home / "audit.jsonl", KEY)
    log.write({"type": "decision", "sub": "a", "would_deny": [{"code": "policy_denied", "rule": None, "message": "m"}]})
    log.close()
    assert run(home, "audit", "verify") == 0
    assert run(home, "policy", "report") == 0
    assert "policy_denied" in capsys.readouterr().out
    path = home / "audit.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"sub":"a"', b'"sub":"b"'))
    assert run(home, "audit", "verify") == 1
    assert "record seq 1 (line 1) was changed" in capsys.readouterr().err
