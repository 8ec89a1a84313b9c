"""`/metrics` after real work (issue 12, item 6): DLP and sandbox-run latency histograms, quota-store
errors and policy reloads, scraped from a real gateway after real calls, a real reload, a rejected
edit and a real redis-server killed under it."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import httpx

from tests.clients import client, error_of
from tests.fakes import PKI, REPO, FakeVendor, vendor_settings
from tests.processes import GatewayProcess, RedisServer

PAY = "https://api.stripe.com/v1/payment_intents"
BALANCE = "https://api.stripe.com/v1/balance"


def scrape(gw: GatewayProcess) -> dict[str, float]:
    """Every sample of the exposition, by its name and labels as written."""
    token = gw.token(sub="scraper", role="metrics", scopes=(), max_ttl=86400)
    r = httpx.get(f"{gw.api_url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    samples = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def wait_for(gw: GatewayProcess, sample: str, value: float, seconds: float = 10) -> dict[str, float]:
    deadline = time.monotonic() + seconds
    while (got := scrape(gw)).get(sample) != value and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


def test_metrics_after_calls_runs_reloads_and_a_store_failure(
    tmp_path: Path, pki: PKI, vendor: FakeVendor, redis: RedisServer
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    settings = vendor_settings(pki, vendor, policies=str(policies), stores={"rate_limits": redis.url})
    with GatewayProcess(tmp_path / "gw", settings).start() as gw:
        before = scrape(gw)
        assert before['egress_policy_reloads_total{result="ok"}'] == 0 == before['egress_policy_reloads_total{result="error"}']
        assert before["egress_quota_store_errors_total"] == 0
        assert not [k for k in before if k.startswith(("egress_dlp_seconds", "egress_sandbox_run_seconds"))]

        token = gw.token(sub="measured", role="finance", tenant="acme", scopes=("stripe:*", "sandbox:python"))
        with client(gw, token) as c:
            paid = c.post(PAY, data={"amount": "1500", "currency": "usd", "metadata[account]": "1234567890",
                                     "description": "for jane.doe@example.com"})
        assert paid.status_code == 200, paid.text
        api = {"Authorization": f"Bearer {token}"}
        ran = httpx.post(f"{gw.api_url}/v1/sandbox/run", json={"tool": "stats", "input": {"values": [1, 2]}}, headers=api, timeout=60)
        refused = httpx.post(f"{gw.api_url}/v1/sandbox/run", json={"python": "print(1)"}, headers=api, timeout=60)
        assert ran.status_code == 200 and error_of(refused)["code"] == "policy_denied"  # no shipped policy grants snippets

        (policies / "extra.yaml").write_text("version: 1\nsubjects: {roles: [extra]}\nrules: []\n")
        wait_for(gw, 'egress_policy_reloads_total{result="ok"}', 1)
        (policies / "broken.yaml").write_text("version: 1\nsubjects: {roles: [x]}\nrules:\n  - {connector: nope, actions: [a]}\n")
        wait_for(gw, 'egress_policy_reloads_total{result="error"}', 1)
        time.sleep(1.5)  # three more polls of the same broken directory: rejected once, counted once

        redis.kill()
        try:
            with client(gw, token) as c:
                down = c.get(BALANCE)
            assert (down.status_code, error_of(down)["code"]) == (503, "store_unavailable")
            after = scrape(gw)
        finally:
            redis.start()

    hist = 'egress_dlp_seconds_count{connector="stripe",action="create_payment_intent"}'
    assert after[hist] == 1 and after['egress_dlp_seconds_sum{connector="stripe",action="create_payment_intent"}'] > 0
    assert after['egress_dlp_seconds_bucket{connector="stripe",action="create_payment_intent",le="+Inf"}'] == 1
    assert after['egress_sandbox_run_seconds_count{tool="stats"}'] == 1
    assert after['egress_sandbox_run_seconds_count{tool="python"}'] == 1
    assert after['egress_sandbox_run_seconds_bucket{tool="stats",le="60.0"}'] == 1
    assert after['egress_policy_reloads_total{result="ok"}'] == 1
    assert after['egress_policy_reloads_total{result="error"}'] == 1
    assert after["egress_quota_store_errors_total"] == 1
    assert not [k for k in after if re.search(r"jane|example\.com", k)]
