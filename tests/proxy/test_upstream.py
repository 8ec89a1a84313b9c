"""Steps 8-9: the vendor side. TLS is always verified; failures and timeouts are JSON refusals."""

from __future__ import annotations

import time

import pytest

from tests.clients import client, error_of
from tests.fakes import PKI, VENDOR_HOSTS, FakeVendor, vendor_settings
from tests.processes import free_port


@pytest.fixture
def wrong_name_vendor(pki: PKI):
    v = FakeVendor(pki.leaf("wrong-name", ("not-stripe.example",)))
    yield v
    v.close()


@pytest.fixture
def expired_vendor(pki: PKI):
    v = FakeVendor(pki.leaf("expired", VENDOR_HOSTS, expired=True))
    yield v
    v.close()


@pytest.fixture
def untrusted_vendor(tmp_path):
    v = FakeVendor(PKI(tmp_path / "other-ca").leaf("untrusted", VENDOR_HOSTS))
    yield v
    v.close()


# A gateway each. In the default run [untrusted_vendor] stands for the three here (the audit record
# too), and the wrong-name and expired certificates are each refused 502 upstream_tls, audited, never
# sent, on the chaos suite's shared gateway: tests/chaos/test_upstream_faults.py::
# test_fault_ends_in_its_documented_refusal[ok-wrong_host-...] and [ok-expired-...]. Both run under `make chaos`.
@pytest.mark.parametrize("bad", [
    pytest.param("wrong_name_vendor", marks=pytest.mark.chaos_full),
    pytest.param("expired_vendor", marks=pytest.mark.chaos_full),
    "untrusted_vendor",
])
def test_bad_vendor_certificate_is_502_upstream_tls(make_gateway, pki: PKI, bad: str, request) -> None:
    bad_vendor: FakeVendor = request.getfixturevalue(bad)
    gw = make_gateway(vendor_settings(pki, bad_vendor))
    with client(gw, gw.token()) as c:
        r = c.get("https://api.stripe.com/v1/balance")
    err = error_of(r)
    assert (r.status_code, err["code"]) == (502, "upstream_tls")
    assert not bad_vendor.received
    rec = next(x for x in gw.audit() if x["decision_id"] == err["decision_id"] and x["decision"] == "deny")
    assert rec["code"] == "upstream_tls" and rec["connector"] == "stripe"


# A gateway of its own for what tests/chaos/test_upstream_faults.py::test_fault_ends_in_its_documented_refusal
# [slow_headers-good-504 upstream_timeout] checks in the default run on a shared gateway (a vendor slower
# than the read timeout: 504 upstream_timeout, audited); this one runs under `make chaos`.
@pytest.mark.chaos_full
def test_slow_vendor_is_504_upstream_timeout(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    gw = make_gateway(vendor_settings(pki, vendor, timeouts={"connect": "2s", "read": "1s"}))
    vendor.delay = 5.0  # a 200 after 5 s if the gateway waited; the timeout answers first
    with client(gw, gw.token()) as c:
        r = c.get("https://api.stripe.com/v1/balance")
    assert (r.status_code, error_of(r)["code"]) == (504, "upstream_timeout")


def test_refused_connection_is_502_upstream_failed(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    settings = vendor_settings(pki, vendor)
    settings["upstreams"]["api.stripe.com"] = f"https://127.0.0.1:{free_port()}"
    gw = make_gateway(settings)
    with client(gw, gw.token()) as c:
        r = c.get("https://api.stripe.com/v1/balance")
    assert (r.status_code, error_of(r)["code"]) == (502, "upstream_failed")


def test_missing_credential_fails_closed(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    gw = make_gateway(vendor_settings(pki, vendor), env={"TEST_STRIPE_KEY": ""})
    with client(gw, gw.token()) as c:
        r = c.get("https://api.stripe.com/v1/balance")
    err = error_of(r)
    assert (r.status_code, err["code"]) == (503, "store_unavailable")
    assert "stripe" in err["message"]
    assert not vendor.received


def test_circuit_opens_after_failures_then_half_open_probe_closes_it(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    gw = make_gateway(vendor_settings(pki, vendor, breaker={"failures": 3, "reset": "1s"}))
    vendor.status = 503
    with client(gw, gw.token()) as c:
        assert [c.get("https://api.stripe.com/v1/balance").status_code for _ in range(3)] == [503] * 3
        sent = len(vendor.received)
        r = c.get("https://api.stripe.com/v1/balance")
        err = error_of(r)
        assert (r.status_code, err["code"]) == (503, "circuit_open")
        assert int(r.headers["retry-after"]) >= 1
        assert len(vendor.received) == sent  # refused without dialing
        # Other vendors have circuits of their own.
        assert c.post("https://api.openai.com/v1/embeddings", json={"model": "m", "input": "x"}).status_code == 503
        time.sleep(1.1)
        vendor.status = 200
        assert c.get("https://api.stripe.com/v1/balance").status_code == 200  # the probe
        assert c.get("https://api.stripe.com/v1/balance").status_code == 200
