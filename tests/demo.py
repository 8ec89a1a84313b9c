"""`make demo`: a scripted agent walks through allowed and refused calls, offline.

It starts the same fake vendors and real gateway process the tests use, then prints one row per
call: what the agent tried, the status, the decision code, and what the vendor saw.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.clients import client
from tests.fakes import PKI, VENDOR_ENV, VENDOR_HOSTS, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

GREEN, RED, YELLOW, DIM, RESET = "\033[32m", "\033[31m", "\033[33m", "\033[2m", "\033[0m"


@dataclass
class Step:
    title: str
    run: Callable[[], httpx.Response | str]


def _colour(text: str, colour: str) -> str:
    return f"{colour}{text}{RESET}" if sys.stdout.isatty() and not os.environ.get("NO_COLOR") else text


def _outcome(result: httpx.Response | str) -> tuple[str, str]:
    if isinstance(result, str):
        return "-", result
    if result.headers.get("content-type", "").startswith("application/json") and "error" in result.json():
        err = result.json()["error"]
        return str(result.status_code), f"{err['code']}: {err['message']}"
    return str(result.status_code), "allowed"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="egress-demo-") as tmp:
        root = Path(tmp)
        pki = PKI(root / "pki")
        vendor = FakeVendor(pki.leaf("vendor", VENDOR_HOSTS))
        gw = GatewayProcess(root / "gateway", vendor_settings(pki, vendor)).start()
        try:
            return walk(gw, vendor)
        finally:
            gw.stop()
            vendor.close()


def walk(gw: GatewayProcess, vendor: FakeVendor) -> int:
    """The scripted agent against `gw`'s ports (one gateway, or `make fleet`'s HAProxy)."""
    finance = gw.token(sub="finance-agent-01", role="finance", scopes=("stripe:*",))
    research = gw.token(sub="research-agent-01", role="research", scopes=("openai:*", "serpapi:*"))

    def call(token: str, method: str, url: str, **kw: object) -> Callable[[], httpx.Response | str]:
        def run() -> httpx.Response | str:
            # Refusals at CONNECT too come back as the JSON answer to the request.
            with client(gw, token, timeout=10) as c:
                return c.request(method, url, **kw)  # type: ignore[arg-type]

        return run

    def revoked_call() -> httpx.Response | str:
        token = gw.token(sub="finance-agent-02", role="finance", scopes=("stripe:*",))
        with client(gw, token, timeout=10) as c:
            c.get("https://api.stripe.com/v1/balance")
            gw.cli("token", "revoke", "--sub", "finance-agent-02")
            time.sleep(1.0)
            return c.get("https://api.stripe.com/v1/balance")

    steps = [
        Step("finance: create a $15 payment intent", call(finance, "POST", "https://api.stripe.com/v1/payment_intents",
                                                          data={"amount": "1500", "currency": "usd"},
                                                          headers={"Authorization": "Bearer sk_agent_guess"})),
        Step("finance: read the balance", call(finance, "GET", "https://api.stripe.com/v1/balance")),
        Step("finance: amount is not a number", call(finance, "POST", "https://api.stripe.com/v1/payment_intents",
                                                     data={"amount": "lots", "currency": "usd"})),
        Step("finance: an endpoint no action covers", call(finance, "DELETE", "https://api.stripe.com/v1/customers/cus_1")),
        Step("finance: call OpenAI (not in its scopes)", call(finance, "POST", "https://api.openai.com/v1/embeddings",
                                                              json={"model": "m", "input": "x"})),
        Step("research: search the web", call(research, "GET", "https://serpapi.com/search.json?q=egress+proxies")),
        Step("research: a host no connector claims", call(research, "GET", "https://example.com/")),
        Step("research: plain http to a vendor", call(research, "GET", "http://api.openai.com/v1/models")),
        Step("finance: revoked inside an open tunnel", revoked_call),
    ]
    print(f"\n{'step':<44} {'status':>6}  decision")
    print("-" * 100)
    for step in steps:
        before = len(vendor.received)
        status, decision = _outcome(step.run())
        colour = GREEN if decision == "allowed" else YELLOW if status == "-" else RED
        seen = ""
        if decision == "allowed" and len(vendor.received) > before:
            got = vendor.received[-1]
            injected = any(key in got.headers.get("authorization", "") + got.path for key in VENDOR_ENV.values())
            seen = _colour("  vendor got the gateway's key" if injected else "  vendor reached", DIM)
        print(f"{step.title:<44} {status:>6}  {_colour(decision[:80], colour)}{seen}")
    print(f"\naudit log: {', '.join(map(str, gw.audit_files))} ({len(gw.audit())} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
