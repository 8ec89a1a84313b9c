"""The decision pipeline itself, without mitmproxy or sockets: table tests and properties, in
milliseconds, over the runtime `egress-gateway run` builds (`gateway.runtime.build`).

The process-level tests in tests/proxy drive the same function through the real proxy; these pin
each step's refusals and the edits of an allowed call, and check properties over generated input.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import runtime
from gateway.config import Config
from gateway.errors import CODES, DECISION_HEADER
from gateway.identity import tokens as identity
from gateway.pipeline import REQUEST_STEPS, RequestView, Tunnel, Verdict, decide
from gateway.runtime import Runtime
from tests.fakes import VENDOR_ENV

HOST, ADDRESS = "api.stripe.com", ("127.0.0.1", 9443)
PAY = "/v1/payment_intents"
GOOD = {"amount": "2000", "currency": "usd", "metadata[account]": "1234567890"}
POLICY = """version: 1
subjects: {roles: [finance]}
rules:
  - name: pay
    connector: stripe
    actions: [create_payment_intent]
    params:
      amount: {max: 500000}
      currency: {one_of: [usd, eur]}
    approval: "amount > 100000"
"""


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("pipeline")
    (root / "policies").mkdir()
    (root / "policies" / "finance.yaml").write_text(POLICY)
    os.environ.update(VENDOR_ENV)
    built = runtime.build(Config.model_validate({
        "state_dir": str(root / "state"),
        "policies": str(root / "policies"),
        "upstreams": {HOST: "https://127.0.0.1:9443"},
        "secrets": {"stripe": "env:TEST_STRIPE_KEY"},
        "max_body": "4KiB",
    }))
    yield built
    built.close()


def tunnel(rt: Runtime, role: str = "finance", scopes: tuple[str, ...] = ("stripe:*",)) -> Tunnel:
    token = identity.issue(rt.key, sub="agent-1", role=role, scopes=scopes, ttl=600, max_ttl=rt.config.max_token_ttl)
    return Tunnel(rt.verifier.verify(token), HOST, 443, ADDRESS)


def view(rt: Runtime, *, body: dict[str, str] | bytes = GOOD, path: str = PAY, **changes: object) -> RequestView:
    raw = body if isinstance(body, bytes) else urlencode(body).encode()
    base = RequestView(
        tunnel=tunnel(rt), method="POST", raw_method=b"POST", scheme="https", host=HOST, port=443,
        authority=None, host_header=(HOST, None), sni=HOST, path=path, query="",
        headers=(
            (b"host", HOST.encode()),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"authorization", b"Bearer sk_live_the_agents_own"),
            (b"proxy-authorization", b"Basic xyz"),
        ),
        body=raw,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def run(rt: Runtime, v: RequestView) -> Verdict:
    return asyncio.run(decide(rt, v))


def audited(rt: Runtime, decision_id: str) -> list[dict[str, object]]:
    lines = rt.state.audit_log.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("decision_id") == decision_id]


def test_the_steps_are_named_in_the_readmes_order() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## What happens to a call", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^ *\d+ (\w+) ", section, flags=re.M)
    assert listed == [step.name for step in REQUEST_STEPS]


def test_an_allowed_call_is_forwarded_with_the_vendor_credential_only(rt: Runtime) -> None:
    verdict = run(rt, view(rt))
    assert verdict.refusal is None and verdict.forward is not None
    fwd = verdict.forward
    assert fwd.address == ADDRESS
    assert fwd.set_headers["Authorization"] == f"Bearer {VENDOR_ENV['TEST_STRIPE_KEY']}"
    assert {"authorization", "proxy-authorization"} <= {h.lower() for h in fwd.drop_headers}
    assert fwd.set_headers[DECISION_HEADER] == verdict.call.decision_id
    (record,) = audited(rt, verdict.call.decision_id)
    assert record["decision"] == "allow" and record["rules"] == ["pay"]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"raw_method": b"post"}, "bad_request"),
        ({"body": b"x" * 5000}, "body_too_large"),
        ({"headers": ((b"x-a", b"b\rStripe-Account: acct_x"),)}, "bad_request"),
        ({"scheme": "http"}, "plain_http_denied"),
        ({"host_header": ("evil.example", None)}, "domain_fronting"),
        ({"sni": "evil.example"}, "domain_fronting"),
        ({"authority": ("api.stripe.com", 8443)}, "domain_fronting"),
        ({"path": "/v1/nothing_here"}, "unknown_action"),
        ({"path": "/v1/payment_intents/%2e%2e"}, "bad_request"),
        ({"body": {**GOOD, "amount": "not a number"}}, "schema_violation"),
        ({"body": {**GOOD, "amount": "900000"}}, "param_violation"),
        ({"body": {**GOOD, "currency": "gbp"}}, "param_violation"),
        ({"body": {**GOOD, "amount": "150000"}}, "approval_required"),
        ({"path": "/v1/refunds", "body": {"payment_intent": "pi_1"}}, "policy_denied"),
        ({"tunnel": None}, "identity_invalid"),
    ],
)
def test_each_step_refuses_with_its_code_and_audits_once(rt: Runtime, changes: dict[str, object], code: str) -> None:
    v = view(rt, **changes)  # type: ignore[arg-type]
    verdict = run(rt, v)
    assert verdict.forward is None and verdict.refusal is not None
    assert verdict.refusal.code == code, verdict.refusal
    (record,) = audited(rt, verdict.call.decision_id)
    assert record["decision"] == "deny" and record["code"] == code


def test_scopes_are_a_ceiling_before_the_policy(rt: Runtime) -> None:
    v = replace(view(rt), tunnel=tunnel(rt, scopes=("openai:*",)))
    verdict = run(rt, v)
    assert verdict.refusal is not None and verdict.refusal.code == "scope_denied"


def test_a_compressed_body_is_refused_not_guessed(rt: Runtime) -> None:
    v = view(rt)
    v = replace(v, headers=(*v.headers, (b"content-encoding", b"gzip")))
    verdict = run(rt, v)
    assert verdict.refusal is not None and verdict.refusal.code == "malformed_body"


_header_names = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"), min_size=1, max_size=20)
_header_values = st.binary(max_size=40)
_paths = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_%2e./\\\x00é", max_size=12), max_size=5).map(lambda p: "/" + "/".join(p))


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    headers=st.lists(st.tuples(_header_names.map(str.encode), _header_values), max_size=6),
    path=st.one_of(st.just(PAY), _paths),
    body=st.binary(max_size=200),
    method=st.sampled_from([b"POST", b"GET", b"post", b"DELETE", b"PATCH"]),
)
def test_any_request_gets_a_verdict_never_an_exception_and_never_leaks_agent_auth(
    rt: Runtime, headers: list[tuple[bytes, bytes]], path: str, body: bytes, method: bytes
) -> None:
    v = replace(view(rt, body=body, path=path), headers=tuple(headers), raw_method=method, method=method.decode().upper())
    verdict = run(rt, v)
    assert (verdict.refusal is None) != (verdict.forward is None)
    if verdict.refusal is not None:
        assert verdict.refusal.code in CODES and verdict.refusal.code != "internal_error", verdict.refusal
    else:
        assert verdict.forward is not None
        dropped = {h.lower() for h in verdict.forward.drop_headers}
        assert {"authorization", "proxy-authorization", "cookie"} <= dropped
