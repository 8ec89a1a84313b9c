"""Real clients run the way an agent runs them: a fresh process whose only set-up is the environment.

Each client is a small program run by its own interpreter (python, node, bash) with exactly the
environment under test, so what it trusts and where it connects comes from that environment alone.
Every program prints `<status> <host the fake vendor saw>` and exits non-zero if the call failed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

from tests.fakes import REPO
from tests.processes import GatewayProcess

# Variables the test runner's environment may carry that would change the outcome; removed first
# so no client passes thanks to the runner's own settings.
CLEARED = re.compile(
    r"(?i)^(https?_proxy|all_proxy|no_proxy|ssl_cert_(file|dir)|requests_ca_bundle|curl_ca_bundle|node_extra_ca_certs)$"
)

# SDKs wrap the TLS failure (openai: "Connection error."): print the whole cause chain, so a test
# can tell a certificate refusal from any other failure.
PRELUDE = """
import sys
def _chain(kind, e, tb):
    seen = []
    while e is not None and len(seen) < 10:
        seen.append(repr(e))
        e = e.__cause__ or e.__context__
    print(" <- ".join(seen), file=sys.stderr)
sys.excepthook = _chain
"""
TLS_REFUSED = re.compile(r"CERTIFICATE_VERIFY_FAILED|UNABLE_TO_VERIFY_LEAF_SIGNATURE|SSL certificate problem")

PYTHON = {
    "requests": """
import requests
r = requests.get("https://api.stripe.com/v1/balance", timeout=20)
print(r.status_code, r.json()["host"])
""",
    "httpx": """
import httpx
r = httpx.get("https://api.stripe.com/v1/balance", timeout=20)
print(r.status_code, r.json()["host"])
""",
    "openai": """
import json
from openai import OpenAI
client = OpenAI(api_key="sk-agent-placeholder", max_retries=0, timeout=20)
raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["hello"])
print(raw.status_code, json.loads(raw.text)["host"])
""",
    "stripe": """
import os, stripe
stripe.api_key = "sk_test_agent_placeholder"
stripe.max_network_retries = 0
if os.environ.get("SET_STRIPE_CA_BUNDLE_PATH"):
    stripe.ca_bundle_path = os.environ["SSL_CERT_FILE"]
print(200, stripe.Balance.retrieve()["host"])
""",
}

# Node 20 has no proxy support of its own: the tunnel is opened with core `http` (as a proxy agent
# such as undici's EnvHttpProxyAgent does), and the TLS inside it trusts what Node trusts, which is
# what NODE_EXTRA_CA_CERTS changes.
NODE = r"""
const http = require("http"), tls = require("tls");
const proxy = new URL(process.env.HTTPS_PROXY);
const auth = Buffer.from(decodeURIComponent(proxy.username) + ":" + decodeURIComponent(proxy.password)).toString("base64");
const req = http.request({host: proxy.hostname, port: proxy.port, method: "CONNECT", path: "api.stripe.com:443",
                          headers: {"Proxy-Authorization": "Basic " + auth}});
req.on("connect", (res, socket) => {
  if (res.statusCode !== 200) { console.error("CONNECT", res.statusCode); process.exit(2); }
  const s = tls.connect({socket, servername: "api.stripe.com"}, () => {
    s.write("GET /v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\nConnection: close\r\n\r\n");
  });
  let data = "";
  s.on("data", (d) => { data += d; });
  s.on("end", () => { console.log(data.split("\r\n")[0].split(" ")[1], JSON.parse(data.split("\r\n\r\n")[1]).host); });
  s.on("error", (e) => { console.error(e.code || e.message); process.exit(1); });
});
req.on("error", (e) => { console.error(e.message); process.exit(1); });
req.end();
"""

# curl 7.88 has no %{url.host}: the host is read from the fake vendor's echo in the body.
CURL = r"""
out=$(curl -sS --fail-with-body --max-time 20 -w '\n%{http_code}' https://api.stripe.com/v1/balance) || exit 1
host=$(printf '%s' "${out%$'\n'*}" | sed -n 's/.*"host": *"\([^"]*\)".*/\1/p')
echo "${out##*$'\n'} $host"
"""

# The vendor host each client calls.
HOSTS = {"openai": "api.openai.com"}


@dataclass(frozen=True)
class Run:
    kind: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def reached(self) -> bool:
        """The client got the fake vendor's 200 for its host, through the gateway."""
        host = HOSTS.get(self.kind, "api.stripe.com")
        return self.returncode == 0 and self.stdout.split() == ["200", host]


def argv(kind: str) -> list[str]:
    """The command line of one client: `requests`, `httpx`, `openai`, `stripe`, `node` or `curl`."""
    if kind in PYTHON:
        return [sys.executable, "-c", PRELUDE + PYTHON[kind]]
    if kind == "node":
        return ["node", "-e", NODE]
    return ["bash", "-c", CURL]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not CLEARED.match(k)}, **extra}


def run_client(kind: str, env: dict[str, str]) -> Run:
    """One client with exactly `env` added to a clean environment."""
    out = subprocess.run(argv(kind), capture_output=True, text=True, env=clean_env(env), timeout=90)
    return Run(kind, out.returncode, out.stdout, out.stderr)


def eval_then(gw: GatewayProcess, env_args: list[str], kind: str, extra: dict[str, str] | None = None) -> Run:
    """`eval "$(egress-gateway env ARGS)"` in a real bash, then the client, as a user types it
    (`egress-gateway` being this checkout's CLI)."""
    script = (
        'egress-gateway() { "$PY" -m gateway.cli "$@"; }\n'
        f'eval "$(egress-gateway env {shlex.join(env_args)} --config "$CFG" --state-dir "$STATE")" || exit 9\n'
        f"exec {shlex.join(argv(kind))}\n"
    )
    env = {"PY": sys.executable, "CFG": str(gw.config_file), "STATE": str(gw.state_dir), **(extra or {})}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=REPO, env=clean_env(env), timeout=90)
    return Run(kind, out.returncode, out.stdout, out.stderr)


def exports_of(gw: GatewayProcess, env_args: list[str]) -> dict[str, str]:
    """The variables `egress-gateway env` sets, read back from a real shell after `eval`."""
    names = ("HTTPS_PROXY", "https_proxy", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
    script = (
        f'eval "$("$PY" -m gateway.cli env {shlex.join(env_args)} --config "$CFG" --state-dir "$STATE")" || exit 9\n'
        + "".join(f'printf "%s\\0" "${name}"\n' for name in names)
    )
    env = {"PY": sys.executable, "CFG": str(gw.config_file), "STATE": str(gw.state_dir)}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=REPO, env=clean_env(env),
                         timeout=60, check=True)
    return dict(zip(names, out.stdout.split("\0")[:-1], strict=True))
