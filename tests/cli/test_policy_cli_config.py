"""`policy check` and `policy test` through the real CLI judge what `run` would judge: the config's
connectors, the policy directory given with `--policies`, and a tenant mismatch named as such.
A typo in a parameter path is refused at check and at hot reload, and the last good policy serves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.clients import client, error_of
from tests.fakes import PKI, REPO, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

WEATHER_POLICY = """\
version: 1
subjects: {roles: [forecaster]}
rules:
  - connector: weather
    actions: [forecast]
    params:
      days: {max: 7}
      _path.city: {regex: "^[a-z]+$"}
"""


def forecast(tmp_path: Path, days: int) -> Path:
    req = tmp_path / f"forecast-{days}.json"
    req.write_text(json.dumps({"connector": "weather", "action": "forecast", "params": {"days": days, "_path": {"city": "oslo"}}}))
    return req


def test_check_and_test_use_the_configs_connectors(tmp_path: Path) -> None:
    policies = tmp_path / "weather-policies"
    policies.mkdir()
    (policies / "weather.yaml").write_text(WEATHER_POLICY)
    plain = GatewayProcess(tmp_path / "plain", {"policies": str(policies)})
    out = plain.cli("policy", "check", check=False)
    assert out.returncode == 1 and "weather.yaml:4: unknown connector 'weather'" in out.stderr, out.stderr
    custom = GatewayProcess(tmp_path / "custom", {"policies": str(policies), "connectors": ["tests.connectors.weather:CONNECTOR"]})
    out = custom.cli("policy", "check", check=False)
    assert out.returncode == 0, out.stderr
    allowed = custom.cli("policy", "test", "--as", "forecaster", str(forecast(tmp_path, 3)), check=False)
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["decision"] == "allow", allowed.stdout + allowed.stderr
    denied = custom.cli("policy", "test", "--as", "forecaster", str(forecast(tmp_path, 10)), check=False)
    assert denied.returncode == 1 and json.loads(denied.stdout)["code"] == "param_violation"


@pytest.mark.chaos_full  # ~10 s of CLI runs; `policy check`/`test` against the config are in the default run above and below
def test_policies_flag_points_check_and_test_at_another_directory(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "gw", {"policies": str(REPO / "policies")})
    other = tmp_path / "other"
    other.mkdir()
    (other / "only.yaml").write_text("version: 1\nsubjects: {roles: [x]}\nrules:\n  - {connector: stripe, actions: [teleport]}\n")
    out = gw.cli("policy", "check", "--policies", str(other), check=False)
    assert out.returncode == 1 and f"{other / 'only.yaml'}:4: unknown action 'teleport'" in out.stderr, out.stderr
    assert gw.cli("policy", "check", check=False).returncode == 0
    req = tmp_path / "balance.json"
    req.write_text(json.dumps({"connector": "stripe", "action": "retrieve_balance", "params": {}}))
    (other / "only.yaml").write_text("version: 1\nsubjects: {roles: [x]}\nrules:\n  - {connector: stripe, actions: [retrieve_balance]}\n")
    assert gw.cli("policy", "test", "--as", "x", str(req), check=False).returncode == 1  # the config's dir: no rule for x
    out = gw.cli("policy", "test", "--policies", str(other), "--as", "x", str(req), check=False)
    assert out.returncode == 0 and json.loads(out.stdout)["decision"] == "allow", out.stdout + out.stderr


def test_a_missing_tenant_is_named_as_the_cause(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "gw", {"policies": str(REPO / "policies")})
    req = tmp_path / "pay.json"
    req.write_text(json.dumps({"connector": "stripe", "action": "create_payment_intent",
                               "params": {"amount": 2000, "currency": "usd", "metadata": {"account": "1234567890"}}}))
    for tenant, shown in ((None, "none"), ("globex", "'globex'")):
        argv = ["policy", "test", "--as", "finance", *(["--tenant", tenant] if tenant else []), str(req)]
        reason = json.loads(gw.cli(*argv, check=False).stdout)["message"]
        assert f"allows it in tenant 'acme' only, and this agent's tenant is {shown}" in reason, reason
    assert gw.cli("policy", "test", "--as", "finance", "--tenant", "acme", str(req), check=False).returncode == 0


def test_a_typo_in_a_parameter_path_is_refused_at_check_and_at_reload(make_gateway, pki: PKI, vendor: FakeVendor, tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    gw: GatewayProcess = make_gateway(vendor_settings(pki, vendor, policies=str(policies)))
    research = policies / "research.yaml"
    original = research.read_text()
    lines = original.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if '"messages[*].role"' in line)
    lines[at] = lines[at].replace('"messages[*].role"', '"messages[*].rol"')
    research.write_text("".join(lines))
    out = gw.cli("policy", "check", check=False)
    assert out.returncode == 1 and f"research.yaml:{at + 1}: parameter 'messages[*].rol': no field 'rol' in messages[*]" in out.stderr, out.stderr
    token = gw.token(sub="research-1", role="research", scopes=("openai:*",))
    tool_role = {"model": "gpt-4o-mini", "max_completion_tokens": 10, "messages": [{"role": "tool", "content": "x", "tool_call_id": "t"}]}
    gw.wait_log("rejected, still serving")  # the second poll, where a valid edit would have been swapped in
    with client(gw, token) as c:
        r = c.post("https://api.openai.com/v1/chat/completions", json=tool_role)
    err = error_of(r)
    assert (r.status_code, err["code"]) == (403, "param_violation") and "messages[0].role" in err["message"], err
    log = gw.log_file.read_text()
    assert "rejected" in log and f"research.yaml:{at + 1}: parameter 'messages[*].rol'" in log


def test_policy_test_validates_and_coerces_as_the_running_gateway_does(tmp_path: Path) -> None:
    """Issue 12, item 3: `policy test` runs the pipeline's own validate and authorize steps, so a
    form-style string amount is coerced as live, and a field the action does not have is refused."""
    gw = GatewayProcess(tmp_path / "gw", {"policies": str(REPO / "policies")})
    base = {"currency": "usd", "metadata": {"account": "1234567890"}}
    cases = [
        ({**base, "amount": "2000"}, 0, "allow", None),
        ({**base, "amount": 2000, "teleport": "now"}, 1, "deny", "schema_violation"),
        ({**base, "amount": "lots"}, 1, "deny", "schema_violation"),
        ({**base, "amount": 900000}, 1, "deny", "param_violation"),
    ]
    for i, (params, status, decision, code) in enumerate(cases):
        req = tmp_path / f"pay-{i}.json"
        req.write_text(json.dumps({"connector": "stripe", "action": "create_payment_intent", "params": params}))
        out = gw.cli("policy", "test", "--as", "finance", "--tenant", "acme", str(req), check=False)
        shown = json.loads(out.stdout)
        assert (out.returncode, shown["decision"], shown["code"]) == (status, decision, code), out.stdout
