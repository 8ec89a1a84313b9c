"""Attestation at start: the sha256 of every artifact loaded (policy bundle, connector modules, DLP
name lists, WASM tools) in the log, `/readyz` and `egress-gateway status`, computed here
independently; a pinned artifact that differs stops start-up with one readable line, and a pinned
policy bundle refuses a hot reload whose hash differs (the old policy keeps deciding)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from dlp.names import ATTESTED
from gateway.attest import check
from gateway.cli.main import main
from gateway.config import load
from gateway.errors import ConfigError
from tests.clients import client
from tests.fakes import PKI, REPO, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

POLICY = "version: 1\nsubjects: {roles: [finance]}\nrules:\n  - {connector: stripe, actions: [create_payment_intent], params: {amount: {max: %d}}}\n"


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def bundle_sha256(directory: Path) -> str:
    """The policy bundle's hash as the README defines it: each file's name, NUL, bytes, NUL, by name."""
    h = hashlib.sha256()
    for path in sorted(directory.glob("*.yaml")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return "sha256:" + h.hexdigest()


def expected_tools() -> dict[str, str]:
    """The shipped sample tools whose module is present (the Python one is built, not committed)."""
    out = {}
    for manifest in sorted((REPO / "sandbox" / "tools").glob("*/manifest.yaml")):
        fields = yaml.safe_load(manifest.read_text())
        module = manifest.parent / fields["module"]
        if module.is_file():
            out[f"tool:{fields['name']}"] = sha256_file(module)
    return out


def policies_dir(root: Path, max_amount: int = 500000) -> Path:
    directory = root / "policies"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "finance.yaml").write_text(POLICY % max_amount)
    return directory


def status(gw: GatewayProcess, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`egress-gateway status` for `gw`'s config and state dir, in this process (the same entry point
    as the console script, without a second interpreter's start-up)."""
    capsys.readouterr()
    code = main(["status", "--config", str(gw.config_file), "--state-dir", str(gw.state_dir)])
    out, err = capsys.readouterr()
    return code, out, err


def start_refused(tmp_path: Path, settings: dict[str, object]) -> subprocess.CompletedProcess[str]:
    gw = GatewayProcess(tmp_path / "refused", settings)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(gw.config_file), "--state-dir", str(gw.state_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=120, env=gw._environ(),
    )


def test_readyz_status_and_the_log_show_every_artifact_hash_and_a_pinned_bundle_refuses_a_reload(
    make_gateway: Callable[..., GatewayProcess], pki: PKI, vendor: FakeVendor, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    policies = policies_dir(tmp_path)
    pinned = bundle_sha256(policies)
    gw = make_gateway(vendor_settings(pki, vendor, policies=str(policies), connectors=["tests.connectors.weather:CONNECTOR"],
                                      attest={"pin": {"policies": pinned}}))
    ready = httpx.get(f"{gw.api_url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    got = ready.json()["attestation"]
    expected = {
        "policies": pinned,
        **{f"connector:connectors.builtin.{n}": sha256_file(REPO / "connectors" / "builtin" / f"{n}.py")
           for n in ("openai", "serpapi", "stripe")},
        "connector:tests.connectors.weather": sha256_file(REPO / "tests" / "connectors" / "weather.py"),
        **{f"dlp:{package}/{file}": f"sha256:{digest}" for (package, file), digest in ATTESTED.items()},
        **expected_tools(),
    }
    assert len(expected_tools()) == 8
    assert got == expected
    log = gw.log_file.read_text()
    for name, digest in expected.items():
        assert f"attest: {name} {digest}" in log

    code, out, _ = status(gw, capsys)
    assert code == 0
    shown = json.loads(out)
    assert (shown["running"], shown["status"], shown["attestation"]) == (True, "ready", expected)

    # The pinned bundle refuses a reload whose hash differs; the old policy keeps deciding.
    (policies / "finance.yaml").write_text(POLICY % 100)  # would refuse the payment below
    changed = bundle_sha256(policies)
    for _ in range(100):
        if f"the policy bundle's {changed} is not the pinned {pinned}" in gw.log_file.read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail("the refused reload was never logged")
    assert httpx.get(f"{gw.api_url}/readyz").json()["attestation"]["policies"] == pinned
    with client(gw, gw.token(role="finance", scopes=("stripe:*",))) as c:
        r = c.post("https://api.stripe.com/v1/payment_intents", data={"amount": "1500", "currency": "usd"})
    assert r.status_code == 200, r.text
    records = [rec for rec in gw.audit() if rec.get("decision_id") == r.headers["x-egress-decision-id"]]
    assert [(rec["phase"], rec["policy_version"]) for rec in records][:1] == [("decision", pinned.removeprefix("sha256:")[:16])]

    gw.stop()
    code, out, _ = status(gw, capsys)
    assert code == 1
    recorded = json.loads(out)
    assert (recorded["running"], recorded["attestation"]) == (False, expected)


def test_status_without_any_gateway_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = status(GatewayProcess(tmp_path / "never", {}), capsys)
    assert code == 2 and out == ""
    assert err.startswith("egress-gateway: no gateway answers at http://127.0.0.1:") and err.count("\n") == 1


def test_a_pinned_artifact_that_differs_refuses_start_with_a_readable_message(pki: PKI, vendor: FakeVendor, tmp_path: Path) -> None:
    policies = policies_dir(tmp_path)
    stripe = sha256_file(REPO / "connectors" / "builtin" / "stripe.py")
    wrong = "sha256:" + "0" * 64
    out = start_refused(tmp_path, vendor_settings(pki, vendor, policies=str(policies), attest={
        "pin": {"policies": wrong, "connector:connectors.builtin.stripe": stripe, "tool:no_such_tool": wrong},
    }))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"attest.pin.policies: the loaded artifact has {bundle_sha256(policies)}, pinned {wrong}" in out.stderr
    assert "attest.pin.tool:no_such_tool: no such artifact was loaded" in out.stderr
    assert "connector:connectors.builtin.stripe" not in out.stderr.split("attestation failed:")[1].split("loaded:")[0]
    assert not (tmp_path / "refused" / "state" / "audit.jsonl").exists()  # it never served


def test_pin_checks_name_every_problem() -> None:
    artifacts = {"policies": "sha256:" + "a" * 64, "tool:stats": "sha256:" + "b" * 64}
    check({"policies": "sha256:" + "a" * 64}, artifacts)  # equal: no error
    with pytest.raises(ConfigError) as e:
        check({"policies": "sha256:" + "c" * 64, "connector:x": "sha256:" + "a" * 64}, artifacts)
    lines = str(e.value).splitlines()
    assert lines[0] == "refusing to start, attestation failed:"
    assert lines[1] == "attest.pin.connector:x: no such artifact was loaded (loaded: policies, tool:stats)"
    assert lines[2] == f"attest.pin.policies: the loaded artifact has sha256:{'a' * 64}, pinned sha256:{'c' * 64}"


@pytest.mark.parametrize("pin", ["a" * 64, "sha256:" + "A" * 64, "sha256:abc", "md5:" + "a" * 32])
def test_a_malformed_pin_is_a_config_error(tmp_path: Path, pin: str) -> None:
    with pytest.raises(ConfigError, match="expected sha256: and 64 lower-case hex digits"):
        load(None, {"attest": {"pin": {"policies": pin}}})
