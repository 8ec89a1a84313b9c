"""`egress-gateway env`, `--version` and the global options, through the real CLI in real shells."""

from __future__ import annotations

import os
import re
import ssl
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import unquote, urlsplit

import certifi
import jwt
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli.agent_env import CA_VARIABLES, PROXY_VARIABLES, exports, proxy_url, user_name
from tests.cli.env_clients import clean_env
from tests.fakes import REPO

# Anything a user could pass or a path could hold, except NUL (no shell variable can hold it).
TEXT = st.text(st.characters(exclude_characters="\0", codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=clean_env({}), timeout=60, check=check)


@settings(max_examples=60)
@given(sub=TEXT, bundle=TEXT, token=st.from_regex(r"[A-Za-z0-9_-]{10,40}\.[A-Za-z0-9_-]{10,40}\.[A-Za-z0-9_-]{10,40}", fullmatch=True))
def test_exports_survive_eval_whatever_the_sub_and_path(sub: str, bundle: str, token: str) -> None:
    """A hostile sub (`$(...)`, quotes, newlines) or state path is data to the shell, never code."""
    text = exports(proxy_url("127.0.0.1:8080", sub, token), Path(bundle))
    script = 'eval "$EXPORTS" || exit 9\nprintf "%s\\0" "$HTTPS_PROXY" "$https_proxy" "$SSL_CERT_FILE" "$REQUESTS_CA_BUNDLE" "$CURL_CA_BUNDLE" "$NODE_EXTRA_CA_CERTS"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, env={"EXPORTS": text, "PATH": os.environ["PATH"]},
                         timeout=10, check=True)
    proxy, lower, *cas = os.fsdecode(out.stdout).split("\0")[:-1]
    assert lower == proxy and cas == [str(Path(bundle))] * len(CA_VARIABLES) and out.stderr == b""
    u = urlsplit(proxy)
    assert (u.password, u.hostname, u.port) == (token, "127.0.0.1", 8080)
    # A user name every client sends alike (tests/proxy/test_client_matrix.py runs them with odd subs).
    assert u.username and re.fullmatch(r"[A-Za-z0-9._~-]+", u.username) and u.username == user_name(sub)
    assert u.username == sub or not re.fullmatch(r"[A-Za-z0-9._~-]+", sub)


def test_proxy_host_for_wildcard_and_ipv6_listeners() -> None:
    assert urlsplit(proxy_url("0.0.0.0:9000", "a", "t")).netloc == "a:t@127.0.0.1:9000"
    assert urlsplit(proxy_url("[::1]:9000", "a", "t")).netloc == "a:t@[::1]:9000"
    assert urlsplit(proxy_url("0.0.0.0:9000", "a", "t", host="gw.internal")).netloc == "a:t@gw.internal:9000"


def _pems(data: bytes) -> list[bytes]:
    return [b"-----BEGIN CERTIFICATE-----" + p.split(b"-----END CERTIFICATE-----")[0]
            for p in data.split(b"-----BEGIN CERTIFICATE-----")[1:]]


def test_env_prints_every_export_and_one_bundle_of_system_cas_plus_the_gateway_ca(tmp_path: Path) -> None:
    state = tmp_path / "state dir with 'quotes'"
    out = cli("--state-dir", str(state), "env", "--sub", "fin-01", "--role", "finance", "--tenant", "acme",
              "--scope", "stripe:*", "--ttl", "5m")
    names = [line.split("=", 1)[0].removeprefix("export ") for line in out.stdout.splitlines()]
    assert names == [*PROXY_VARIABLES, *CA_VARIABLES]
    assert "fin-01" in out.stderr and "eyJ" not in out.stderr  # the token goes only to stdout
    bundle = state / "agent-ca-bundle.pem"
    assert out.stdout.count(str(bundle)) == 0 and out.stdout.count("agent-ca-bundle.pem") == len(CA_VARIABLES)
    gateway_ca = (state / "ca" / "mitmproxy-ca-cert.pem").read_bytes()
    system = Path(certifi.where()).read_bytes()
    assert _pems(bundle.read_bytes()) == _pems(system) + _pems(gateway_ca)
    assert ssl.create_default_context(cafile=str(bundle)).cert_store_stats()["x509_ca"] == len(_pems(system)) + 1
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o644
    token = unquote(urlsplit(out.stdout.splitlines()[0].split("=", 1)[1].strip("'")).password or "")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["role"], claims["tenant"], claims["scopes"]) == ("fin-01", "finance", "acme", ["stripe:*"])
    assert claims["exp"] - claims["iat"] == 300
    before = bundle.stat().st_mtime_ns
    cli("--state-dir", str(state), "env", "--sub", "fin-02", "--role", "finance")
    assert bundle.stat().st_mtime_ns == before  # unchanged content is not rewritten under running agents


def test_a_failed_env_fails_the_eval(tmp_path: Path) -> None:
    """`eval ""` succeeds: a failed `env` must hand eval something that fails, or `&& agent` runs bare."""
    out = cli("env", "--sub", "a", "--role", "finance", "--ttl", "2h", "--state-dir", str(tmp_path), check=False)
    assert out.returncode == 2 and out.stdout == "false\n" and "max_token_ttl" in out.stderr
    bad_config = cli("env", "--sub", "a", "--role", "r", "--config", str(tmp_path / "missing.yaml"), check=False)
    assert bad_config.returncode == 2 and bad_config.stdout == "false\n"
    crlf = cli("env", "--sub", "a\r\nexport X=1", "--role", "r", "--state-dir", str(tmp_path), check=False)
    assert crlf.returncode == 2 and crlf.stdout == "false\n" and "sub must be printable" in crlf.stderr
    usage = cli("env", "--role", "r", "--state-dir", str(tmp_path), check=False)  # no --sub
    assert usage.returncode == 2 and usage.stdout == "false\n" and "--sub" in usage.stderr
    assert cli("token", "issue", "--role", "r", check=False).stdout == ""  # only env's output is eval'ed
    script = f'eval "$({sys.executable} -m gateway.cli env --sub a --role r --ttl 2h --state-dir {tmp_path})" && echo "$HTTPS_PROXY"'
    shell = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=REPO, env=clean_env({}), timeout=60)
    assert shell.returncode != 0 and shell.stdout == ""


def test_version_is_the_package_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert cli("--version").stdout.strip() == f"egress-gateway {version}"


def test_global_options_before_the_command(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(f"state_dir: {first}\nmax_token_ttl: 5m\n")
    before = cli("--config", str(cfg), "ca", "path").stdout.strip()
    after = cli("ca", "path", "--config", str(cfg)).stdout.strip()
    assert before == after == str(first / "ca" / "mitmproxy-ca-cert.pem")
    # the same option after the command wins over the one before it
    assert cli("--state-dir", str(first), "ca", "path", "--state-dir", str(second)).stdout.strip().startswith(str(second))
    # --config before the command really is read: its max_token_ttl refuses a 10m token
    refused = cli("--config", str(cfg), "token", "issue", "--sub", "a", "--role", "r", "--ttl", "10m", check=False)
    assert refused.returncode == 2 and "max_token_ttl" in refused.stderr
