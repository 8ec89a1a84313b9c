"""`make fleet`'s fleet, for real: redis-server, two replicas of two workers each, HAProxy in front."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from copy import copy
from pathlib import Path

import pytest

from tests.clients import client
from tests.fakes import PKI, FakeVendor
from tests.fleet.local import haproxy, start_replicas
from tests.processes import RedisServer


@pytest.mark.chaos_full
def test_two_replicas_of_two_workers_behind_haproxy_are_one_gateway(
    tmp_path: Path, pki: PKI, vendor: FakeVendor, redis: RedisServer
) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed: apt-get install -y haproxy (.ci/run does)")
    replicas = start_replicas(tmp_path, pki, vendor, redis)
    balancer: subprocess.Popen[bytes] | None = None
    try:
        balancer, proxy, api = haproxy(tmp_path, replicas)
        front = copy(replicas[0])
        front.port, front.api_port = proxy, api
        token = front.token(sub="fleet-agent", scopes=("stripe:*",))  # r1's key; r2 has the same
        for _ in range(12):  # a new connection each: HAProxy's round robin alternates the replicas
            with client(front, token) as c:
                r = c.post("https://api.stripe.com/v1/payment_intents", data={"amount": "100", "currency": "usd"})
                assert r.status_code == 200, r.text
        served = Counter(rec["replica"] for gw in replicas for rec in gw.audit()
                         if rec.get("phase") == "decision" and rec["sub"] == "fleet-agent")
        assert served == {"r1": 6, "r2": 6}
        assert len(vendor.received) == 12
    finally:
        if balancer is not None:
            balancer.terminate()
            balancer.wait()
        codes = [gw.stop() for gw in replicas]
    assert codes == [0, 0]
    verify = replicas[0].cli("audit", "verify", "--strict", *(str(gw.state_dir) for gw in replicas), check=False)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.count("closed at shutdown") == 4
