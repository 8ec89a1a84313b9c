"""`env:` and `file:` credentials held to the rule vault values follow: a value goes into a header
of the vendor request, so one with a line break or NUL inside is refused (503 store_unavailable,
nothing sent) rather than injected, surrounding whitespace is stripped, and a file fixed on disk is
used again without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.clients import chat, client, error_of
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

SMUGGLED = "X-Injected: 1"
ENV_VALUE = f"sk_env_crlf_0005\r\n{SMUGGLED}"
FILE_VALUE = f"sk-file-crlf-0006\r\n{SMUGGLED}\n"
PADDED = "  fake-serp-padded-0007 \n"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "openai.key"
    path.write_text(FILE_VALUE)
    return path


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor, key_file: Path) -> Iterator[GatewayProcess]:
    settings = vendor_settings(pki, vendor_server, secrets={
        "stripe": "env:CRLF_STRIPE_KEY", "openai": f"file:{key_file}", "serpapi": "env:PADDED_SERPAPI_KEY"})
    env = {"CRLF_STRIPE_KEY": ENV_VALUE, "PADDED_SERPAPI_KEY": PADDED}
    with GatewayProcess(tmp_path_factory.mktemp("references-gw"), settings, env).start() as g:
        yield g


def test_a_credential_with_a_line_break_is_refused_never_injected(gw: GatewayProcess, vendor: FakeVendor,
                                                                   key_file: Path) -> None:
    with client(gw, gw.token(scopes=("stripe:*", "openai:*"))) as c:
        stripe = c.get("https://api.stripe.com/v1/balance")
        openai = c.post("https://api.openai.com/v1/chat/completions", json=chat("hi"))
    for r, name in ((stripe, "stripe"), (openai, "openai")):
        err = error_of(r)
        assert (r.status_code, err["code"], err["connector"]) == (503, "store_unavailable", name)
        assert "line break" in err["message"]
    assert vendor.received == []  # no request left carrying a smuggled header
    ready = httpx.get(f"{gw.api_url}/readyz")
    assert ready.status_code == 503
    assert set(ready.json()["connectors"]) == {"stripe", "openai"}
    written = gw.log_file.read_text() + gw.audit_file.read_text() + ready.text + stripe.text + openai.text
    for value in ("sk_env_crlf_0005", "sk-file-crlf-0006", "fake-serp-padded-0007"):
        assert value not in written

    key_file.write_text("sk-file-fixed-0008\n")  # fixed on disk: used from the next call, no restart
    with client(gw, gw.token(scopes=("openai:*",))) as c:
        fixed = c.post("https://api.openai.com/v1/chat/completions", json=chat("hi"))
    assert fixed.status_code == 200, fixed.text
    (received,) = vendor.received
    assert received.headers["authorization"] == "Bearer sk-file-fixed-0008"
    assert "x-injected" not in received.headers
    assert set(httpx.get(f"{gw.api_url}/readyz").json()["connectors"]) == {"stripe"}


def test_an_env_credential_is_stripped_of_surrounding_whitespace(gw: GatewayProcess, vendor: FakeVendor) -> None:
    with client(gw, gw.token(scopes=("serpapi:*",))) as c:
        r = c.get("https://serpapi.com/search.json?q=tea")
    assert r.status_code == 200, r.text
    (received,) = vendor.received
    assert received.path == "/search.json?q=tea&api_key=fake-serp-padded-0007"
