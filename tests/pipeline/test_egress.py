"""Step 3: default deny, no private or metadata addresses, no fronting, no plain http, no raw TCP."""

from __future__ import annotations

import socket
import ssl

import httpx
import pytest

from tests.clients import basic, client, error_of, raw_connect, read_response, tunnel_tls
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess


def test_unknown_host_is_refused_before_tls_and_never_dialed(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    # evil.example is routed to the fake vendor, but no connector claims it: it must never be dialed.
    settings = vendor_settings(pki, vendor)
    settings["upstreams"]["evil.example"] = vendor.url
    gw = make_gateway(settings)
    before = vendor.connections
    sock, resp = raw_connect(gw, "evil.example", basic(gw.token()))
    sock.close()
    assert (resp.status, resp.error()["code"]) == (403, "host_denied")
    assert vendor.connections == before and not vendor.received


def test_unknown_action_never_reaches_the_vendor(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    with client(gateway, gateway.token()) as c:
        r = c.delete("https://api.stripe.com/v1/customers/cus_1")
    err = error_of(r)
    assert (r.status_code, err["code"], err["connector"]) == (403, "unknown_action", "stripe")
    assert not vendor.received


@pytest.mark.parametrize("host", ["localhost", "169.254.169.254"])
def test_private_and_metadata_addresses_are_refused(gateway: GatewayProcess, host: str) -> None:
    # Both are in the session gateway's egress.allow, yet no address check is skipped for them.
    sock, resp = raw_connect(gateway, host, basic(gateway.token()), port=443)
    sock.close()
    assert (resp.status, resp.error()["code"]) == (403, "address_denied")


def test_inner_host_header_must_equal_connect_target(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    tls = tunnel_tls(gateway, gateway.token(), "api.stripe.com")
    tls.sendall(b"GET /v1/embeddings HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
    resp = read_response(tls)
    tls.close()
    assert (resp.status, resp.error()["code"]) == (403, "domain_fronting")
    assert not vendor.received


def test_pipelined_requests_in_one_tunnel_are_each_decided(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    """Four requests in one write: each is judged on its own, and the fronted one in between is
    refused without ending what the tunnel allows (nor passing on the others' verdict)."""
    tls = tunnel_tls(gateway, gateway.token(scopes=("stripe:retrieve_balance",)), "api.stripe.com")
    tls.sendall(
        b"GET /v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n"
        b"GET /v1/balance HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"
        b"GET /v1/customers HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n"
        b"GET /v1/balance HTTP/1.0\r\n\r\n"  # HTTP/1.0 without a Host: the tunnel's host, then the end
    )
    answers = tls.makefile("rb")
    codes = []
    for _ in range(4):
        head = b"".join(iter(answers.readline, b"\r\n")).decode("latin-1")
        length = int(next(ln.split(":")[1] for ln in head.splitlines() if ln.lower().startswith("content-length")))
        body = answers.read(length)
        codes.append(head.split()[1] + ("" if head.split()[1] == "200" else " " + body.decode().split('"code":"')[1].split('"')[0]))
    tls.close()
    assert codes == ["200", "403 domain_fronting", "403 scope_denied", "200"]
    # (the HTTP/1.0 one leaves as sent, without a Host header; its connection is the checked address)
    assert [(r.method, r.path, r.host) for r in vendor.received] == [("GET", "/v1/balance", "api.stripe.com"), ("GET", "/v1/balance", "")]


def test_absolute_form_target_must_equal_connect_target(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    tls = tunnel_tls(gateway, gateway.token(), "api.stripe.com")
    tls.sendall(b"GET https://api.openai.com/v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
    resp = read_response(tls)
    tls.close()
    assert resp.status in (400, 403)
    assert resp.error()["code"] in ("domain_fronting", "bad_request")
    assert not vendor.received


def test_sni_must_equal_connect_target(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    tls = tunnel_tls(gateway, gateway.token(), "api.stripe.com", sni="api.openai.com")
    tls.sendall(b"GET /v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
    resp = read_response(tls)
    tls.close()
    assert (resp.status, resp.error()["code"]) == (403, "domain_fronting")
    assert not vendor.received


def test_plain_http_to_a_vendor_is_refused(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    with httpx.Client(proxy=gateway.proxy_url(gateway.token())) as c:
        r = c.get("http://api.stripe.com/v1/balance")
    assert (r.status_code, error_of(r)["code"]) == (403, "plain_http_denied")
    assert not vendor.received


def test_plain_http_inside_a_tunnel_is_refused(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    sock, resp = raw_connect(gateway, "api.stripe.com", basic(gateway.token()))
    assert resp.status == 200
    sock.sendall(b"GET /v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
    resp = read_response(sock)
    sock.close()
    assert (resp.status, resp.error()["code"]) == (403, "plain_http_denied")
    assert not vendor.received


def test_raw_bytes_in_a_tunnel_are_never_relayed(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    before = vendor.connections
    sock, resp = raw_connect(gateway, "api.stripe.com", basic(gateway.token()))
    assert resp.status == 200
    sock.sendall(b"\x00\x01binary-protocol-not-http\r\n\r\n")
    sock.settimeout(5)
    try:
        data = sock.recv(4096)
    except (TimeoutError, ConnectionError):
        data = b""
    sock.close()
    assert not vendor.received and vendor.connections == before
    assert b"binary-protocol" not in data


def test_vendor_tls_is_terminated_with_the_gateway_ca(gateway: GatewayProcess) -> None:
    tls = tunnel_tls(gateway, gateway.token(), "api.stripe.com")
    issuer = dict(x[0] for x in tls.getpeercert()["issuer"])
    tls.close()
    assert issuer["commonName"] == "egress-gateway CA"
    with pytest.raises(ssl.SSLError):
        sock, _ = raw_connect(gateway, "api.stripe.com", basic(gateway.token()))
        ssl.create_default_context().wrap_socket(sock, server_hostname="api.stripe.com")


def test_egress_allow_pass_through_needs_its_scope_and_no_policy_engine(make_gateway, pki: PKI, tmp_path) -> None:
    files = FakeVendor(pki.leaf("files", ("files.example",)))
    try:
        settings = vendor_settings(pki, files, egress={"allow": ["files.example"]})
        settings["upstreams"]["files.example"] = files.url
        gw = make_gateway(settings)
        with client(gw, gw.token(scopes=("egress:files.example",))) as c:
            r = c.get("https://files.example/any/path?x=1", headers={"Authorization": "Bearer agent"})
        assert r.status_code == 200
        assert files.received[-1].path == "/any/path?x=1"
        with client(gw, gw.token(scopes=("stripe:*",))) as c:
            r = c.get("https://files.example/any/path")
        assert (r.status_code, error_of(r)["code"]) == (403, "scope_denied")
        (tmp_path / "policies").mkdir()
        (tmp_path / "policies" / "p.yaml").write_text(
            "version: 1\nsubjects: {roles: [finance]}\nrules:\n  - connector: stripe\n    actions: [retrieve_balance]\n")
        governed = make_gateway({**settings, "policies": str(tmp_path / "policies")}, name="governed")
        with client(governed, governed.token(scopes=("egress:files.example",))) as c:
            r = c.get("https://files.example/any/path")
        assert (r.status_code, error_of(r)["code"]) == (403, "policy_denied")
        assert len(files.received) == 1
    finally:
        files.close()


# Every spelling of a loopback, private, link-local or metadata address an operator (or a typo) could
# put in egress.allow: each is resolved as the gateway's resolver reads it, never trusted as written.
NON_PUBLIC_SPELLINGS = (
    "2130706433", "0177.0.0.1", "0x7f.1", "0x7f000001", "127.1", "127.000.000.001", "127.0.0.1.", "0", "0.0.0.0",
    "::1", "::ffff:127.0.0.1", "::ffff:7f00:1", "0:0:0:0:0:ffff:127.0.0.1", "64:ff9b::7f00:1", "::", "fd00::1",
    "fe80::1%lo", "LOCALHOST.", "vm", "169.254.169.254", "0251.0376.0251.0376", "0xa9fea9fe", "2852039166",
    "100.100.100.200", "fd00:ec2::254", "10.0.0.1",
)


def test_every_spelling_of_a_non_public_address_is_refused_and_no_other_port_opens(make_gateway, pki: PKI, vendor: FakeVendor) -> None:
    settings = vendor_settings(pki, vendor, egress={"allow": list(NON_PUBLIC_SPELLINGS)})
    gw = make_gateway(settings)
    token = basic(gw.token())
    before = vendor.connections
    codes = {}
    for host in NON_PUBLIC_SPELLINGS:
        sock, resp = raw_connect(gw, f"[{host}]" if ":" in host else host, token)
        sock.close()
        codes[host] = (resp.status, resp.error()["code"])
    assert codes == {host: (403, "address_denied") for host in NON_PUBLIC_SPELLINGS}
    # A claimed host's other ports (ssh, smtp, redis, http): never a tunnel to smuggle a protocol through.
    for port in (22, 25, 80, 6379, 8443):
        sock, resp = raw_connect(gw, "api.stripe.com", token, port=port)
        sock.close()
        assert (resp.status, resp.error()["code"]) == (403, "host_denied")
    assert vendor.connections == before and not vendor.received


def test_a_connect_or_absolute_form_inside_a_tunnel_dials_nothing(gateway: GatewayProcess, vendor: FakeVendor) -> None:
    """A tunnel is to the checked address only: a nested CONNECT, an absolute-form target or a Host
    naming another address never makes the gateway dial it (a listener there sees no connection)."""
    canary = socket.socket()
    canary.bind(("127.0.0.1", 0))
    canary.listen(8)
    canary.setblocking(False)
    port = canary.getsockname()[1]
    asks = {
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n": (400, "bad_request"),
        f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n": (403, "domain_fronting"),
        f"GET https://api.stripe.com:{port}/v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n": (403, "domain_fronting"),
        f"GET /v1/balance HTTP/1.1\r\nHost: api.stripe.com:{port}\r\n\r\n": (403, "domain_fronting"),
        "GET /v1/balance HTTP/1.1\r\nHost: api.stripe.com@127.0.0.1\r\n\r\n": (403, "domain_fronting"),
        "GET /v1/balance HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: api.stripe.com\r\n\r\n": (403, "domain_fronting"),
    }
    got = {}
    try:
        for ask in asks:
            tls = tunnel_tls(gateway, gateway.token(), "api.stripe.com")
            tls.sendall(ask.encode())
            resp = read_response(tls)
            tls.close()
            got[ask] = (resp.status, resp.error()["code"])
        with pytest.raises(BlockingIOError):
            canary.accept()
    finally:
        canary.close()
    assert got == asks
    assert not vendor.received
