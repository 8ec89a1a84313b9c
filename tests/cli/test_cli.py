"""The command line contract: every command finds the same state; errors are one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import jwt
import pytest

from tests.fakes import REPO
from tests.processes import GatewayProcess


def test_ca_path_prints_the_certificate_agents_trust(gateway: GatewayProcess) -> None:
    out = gateway.cli("ca", "path")
    assert out.stdout.strip() == str(gateway.ca_file)
    assert gateway.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_ca_path_works_before_the_first_run(tmp_path) -> None:
    state = tmp_path / "fresh"
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "ca", "path", "--state-dir", str(state)],
        capture_output=True, text=True, cwd=REPO, check=True,
    )
    assert (state / "ca" / "mitmproxy-ca-cert.pem").samefile(out.stdout.strip())


def test_token_issue_prints_a_token_the_gateway_accepts(gateway: GatewayProcess) -> None:
    out = gateway.cli("token", "issue", "--sub", "cli-agent", "--role", "finance", "--tenant", "acme",
                      "--scope", "stripe:*", "--scope", "openai:embeddings", "--ttl", "5m")
    token = out.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "cli-agent" and claims["tenant"] == "acme" and claims["role"] == "finance"
    assert claims["scopes"] == ["stripe:*", "openai:embeddings"] and claims["exp"] - claims["iat"] == 300
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    import httpx
    r = httpx.get(f"{gateway.api_url}/.well-known/jwks.json")
    key = jwt.PyJWK(r.json()["keys"][0])
    assert jwt.decode(token, key.key, algorithms=["EdDSA"], audience="egress-gateway")["sub"] == "cli-agent"


def test_token_ttl_above_the_maximum_is_refused_at_issue(gateway: GatewayProcess) -> None:
    out = gateway.cli("token", "issue", "--sub", "a", "--role", "finance", "--ttl", "2h", check=False)
    assert out.returncode == 2
    assert "max_token_ttl" in out.stderr and "Traceback" not in out.stderr


def test_connectors_lists_builtins(gateway: GatewayProcess) -> None:
    out = gateway.cli("connectors").stdout
    for line in ("stripe  (api.stripe.com)", "openai  (api.openai.com)", "serpapi  (serpapi.com)"):
        assert line in out
    assert "create_payment_intent" in out and "/v1/payment_intents/{id}/confirm" in out


def test_bad_config_is_one_line_and_exit_2(tmp_path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("listen: nowhere\nmax_body: lots\nsecrets: {stripe: sk_live_inline}\nbogus: 1\n")
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "connectors", "--config", str(cfg)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    for key in ("listen", "max_body", "secrets.stripe", "bogus"):
        assert key in out.stderr
    assert "sk_live_inline" not in out.stderr


@pytest.mark.parametrize(
    ("config", "state", "command", "says"),
    [
        (b"listen: [\n", "state", ["connectors"], "gateway.yaml:2: not valid YAML: expected the node content"),
        (b"\xff\xfe\x00listen", "state", ["connectors"], "gateway.yaml: not UTF-8 text"),
        (b"secrets: {a: env:A}\nmax_body: 1MiB\nsecrets: {b: env:B}\n", "state", ["connectors"],
         "gateway.yaml:3: not valid YAML: duplicate key 'secrets'"),
        (b"", "a-file", ["token", "issue", "--sub", "a", "--role", "finance"], "is a file, not a directory"),
        (b"", "a-file/below", ["ca", "path"], "cannot use state dir"),
        (b"", "state", ["token", "revoke", "--jti", ""], "--jti or --sub must not be empty"),
        (b"", "state", ["token", "revoke", "--sub", ""], "--jti or --sub must not be empty"),
        # A newline in a token's sub would forge a line in the access log whenever the agent calls.
        (b"", "state", ["token", "issue", "--sub", "a\nb", "--role", "finance"], "sub must be printable"),
        (b"", "state", ["token", "issue", "--sub", "a", "--role", "fin\x1bance"], "role must be printable"),
        (b"", "state", ["token", "issue", "--sub", "a", "--role", "finance", "--tenant", "acme\n"], "tenant must be printable"),
    ],
    ids=["yaml-syntax", "not-utf8", "duplicate-key", "state-dir-is-a-file", "state-dir-under-a-file", "revoke-empty-jti",
         "revoke-empty-sub", "issue-sub-newline", "issue-role-escape", "issue-tenant-newline"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, config: bytes, state: str, command: list[str], says: str) -> None:
    """Each of these was a Python traceback (or, for YAML, a five-line parser dump)."""
    cfg = tmp_path / "gateway.yaml"
    cfg.write_bytes(config)
    (tmp_path / "a-file").write_text("not a directory")
    out = subprocess.run([sys.executable, "-m", "gateway.cli", *command, "--config", str(cfg), "--state-dir",
                          str(tmp_path / state)], capture_output=True, text=True, cwd=REPO)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr.count("\n") == 1 and says in out.stderr, out.stderr


def test_connector_clash_stops_start_up_naming_both(tmp_path) -> None:
    gw = GatewayProcess(tmp_path, {"connectors": ["tests.connectors.clashing:CONNECTOR"]})
    out = gw.cli("run", check=False)
    assert out.returncode == 2
    assert "'stripe'" in out.stderr and "'stripe-copy'" in out.stderr and "Traceback" not in out.stderr


def test_config_connector_reference_registers(tmp_path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("connectors: ['tests.connectors.clashing:EXTRA']\n")
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "connectors", "--config", str(cfg)],
                         capture_output=True, text=True, cwd=REPO, check=True)
    assert "weather  (api.weather.example)" in out.stdout
