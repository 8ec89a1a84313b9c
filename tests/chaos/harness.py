"""How chaos tests drive gateways: settings, policies, the PII and secrets they use, and a few probes.

Every value the suite sends that must never leak (raw PII, vendor keys, agent tokens) is named
here, so the end-of-session leak check greps for exactly what was used.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.chaos.faults import FaultVendor
from tests.chaos.report import ChaosReport
from tests.clients import error_of
from tests.fakes import PKI, VENDOR_ENV, vendor_settings
from tests.processes import GatewayProcess

EMAIL = "chaos.victim@example.org"
PHONE = "+44 20 7946 0321"
CARD = "4000 0566 5566 5556"
RACE_EMAIL = "first.use.race@example.net"
PII = (EMAIL, PHONE, CARD, RACE_EMAIL)
SECRETS = tuple(VENDOR_ENV.values())

PAY = "https://api.stripe.com/v1/payment_intents"
BALANCE = "https://api.stripe.com/v1/balance"
SEARCH = "https://serpapi.com/search.json"
CHAT = "https://api.openai.com/v1/chat/completions"

# Roles for the chaos suite; tenant-less, so any tenant matches.
POLICIES = {
    "payer.yaml": """
version: 1
subjects: {roles: [payer]}
rules:
  - name: payer-pay
    connector: stripe
    actions: [create_payment_intent]
    params: {amount: {max: 500000}}
    rate: 1000/minute
    budget: {field: amount, limit: 10000, per: day}
  - name: payer-balance
    connector: stripe
    actions: [retrieve_balance]
    rate: 1000/minute
""",
    "reader.yaml": """
version: 1
subjects: {roles: [reader]}
rules:
  - name: reader-search
    connector: serpapi
    actions: [search]
    rate: 1000/minute
    fail_open: true
  - name: reader-balance
    connector: stripe
    actions: [retrieve_balance]
    rate: 1000/minute
  - name: reader-pay
    connector: stripe
    actions: [create_payment_intent]
    rate: 1000/minute
dlp:
  tokenize: [EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD]
  reveal: []
""",
    "approver.yaml": """
version: 1
subjects: {roles: [approvee]}
rules:
  - name: approvee-pay
    connector: stripe
    actions: [create_payment_intent]
    approval: "amount > 100"
""",
    "limited.yaml": """
version: 1
subjects: {roles: [limited]}
rules:
  - name: limited-balance
    connector: stripe
    actions: [retrieve_balance]
    rate: 10/minute
""",
    "chatter.yaml": """
version: 1
subjects: {roles: [chatter]}
rules:
  - connector: openai
    actions: [chat_completions, embeddings]
  - connector: stripe
    actions: [create_customer, retrieve_balance, create_payment_intent]
  - connector: serpapi
    actions: [search]
dlp:
  tokenize: [EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD]
  reveal: [EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD]
""",
}


def write_policies(root: Path) -> Path:
    d = root / "policies"
    d.mkdir(parents=True, exist_ok=True)
    for name, text in POLICIES.items():
        (d / name).write_text(text)
    return d


def settings(pki: PKI, vendor: FaultVendor, root: Path, **extra: Any) -> dict[str, Any]:
    """A gateway routed to the fault vendor, with the chaos policies, fast timeouts and breaker."""
    chaos = {
        "policies": str(write_policies(root)),
        "timeouts": {"connect": "2s", "read": "2s"},
        "breaker": {"failures": 1000, "reset": "30s"},
    }
    return vendor_settings(pki, vendor, **{**chaos, **extra})


REPORT = ChaosReport()


def launch(root: Path, pki: PKI, vendor: FaultVendor, env: dict[str, str] | None = None, **extra: Any) -> GatewayProcess:
    """Start a gateway for the chaos suite and keep it on the report for the final checks."""
    return gateway(root, pki, vendor, env, **extra).start()


def gateway(root: Path, pki: PKI, vendor: FaultVendor, env: dict[str, str] | None = None, **extra: Any) -> GatewayProcess:
    """A gateway for the chaos suite, kept on the report for the final checks, not started yet
    (`tests.processes.start_all` starts a fleet's replicas at once)."""
    gw = GatewayProcess(root, settings(pki, vendor, root, **extra), env or {})
    REPORT.gateways.append(gw)
    return gw


def retire(gw: GatewayProcess) -> None:
    """Scrape its metrics (they are part of what the leak check greps), then stop it (without
    waiting for the exit: the leak check waits for every gateway before it reads what they wrote)."""
    if gw.proc is not None and gw.proc.poll() is None:
        try:
            REPORT.scrapes.append(metrics(gw))
        except httpx.HTTPError:
            pass
    gw.stop_soon()


def agent(gw: GatewayProcess, role: str, sub: str | None = None, **kw: Any) -> str:
    """A token for `role`. Quotas are per agent and a Redis store can outlive a test, so every
    token gets an agent id of its own run (`sub` names it; the suffix keeps it unique)."""
    name = f"{sub or role}-{_RUN}"
    return gw.token(sub=name, role=role, tenant="chaos", scopes=("*",), **kw)


_RUN = uuid.uuid4().hex[:8]


def send(report: ChaosReport, c: httpx.Client, method: str, url: str, **kw: Any) -> httpx.Response:
    """One request, counted in the report (a transport failure is counted, then re-raised)."""
    try:
        r = c.request(method, url, **kw)
    except httpx.HTTPError as e:
        report.track(e)
        raise
    report.track(r)
    return r


def code_of(r: httpx.Response) -> str:
    """`status code` of a gateway refusal (validating the contract's JSON), else just the status
    (a success, or a vendor's own error passed through)."""
    try:
        refusal = "code" in r.json()["error"]
    except (ValueError, KeyError, TypeError):
        refusal = False
    return f"{r.status_code} {error_of(r)['code']}" if refusal else str(r.status_code)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def metrics(gw: GatewayProcess) -> str:
    admin = gw.token(sub="chaos-ops", role="admin")
    return httpx.get(f"{gw.api_url}/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=10).text

