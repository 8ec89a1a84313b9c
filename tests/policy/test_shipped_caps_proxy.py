"""The shipped research policy through the real proxy: a chat or responses call leaves only with a
capped output bound, whichever field names it (the gap was a call with neither, or with the newer
`max_completion_tokens`, going out uncapped)."""

from __future__ import annotations

import pytest

from tests.clients import client, error_of
from tests.fakes import PKI, REPO, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

CHAT = "https://api.openai.com/v1/chat/completions"
RESPONSES = "https://api.openai.com/v1/responses"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def research_gw(tmp_path_factory, pki: PKI, vendor_server: FakeVendor):

    settings = vendor_settings(pki, vendor_server, policies=str(REPO / "policies"))
    gw = GatewayProcess(tmp_path_factory.mktemp("research-gw"), settings).start()
    yield gw
    gw.stop()


@pytest.mark.parametrize(
    ("url", "bounds", "field"),
    [
        (CHAT, {}, "max_completion_tokens is required"),
        (CHAT, {"max_tokens": 100}, "max_completion_tokens is required"),
        (CHAT, {"max_completion_tokens": 100000}, "max_completion_tokens 100000 exceeds max 4000"),
        (CHAT, {"max_completion_tokens": 100, "max_tokens": 100000}, "max_tokens 100000 exceeds max 4000"),
        (CHAT, {"max_completion_tokens": 100, "n": 5}, "n 5 exceeds max 1"),
        (RESPONSES, {}, "max_output_tokens is required"),
        (RESPONSES, {"max_output_tokens": 100000}, "max_output_tokens 100000 exceeds max 4000"),
    ],
)
def test_uncapped_output_is_refused(research_gw: GatewayProcess, vendor: FakeVendor, url: str, bounds: dict, field: str) -> None:
    body = {"model": "gpt-4o-mini", **({"messages": MESSAGES} if url == CHAT else {"input": "hi"}), **bounds}
    with client(research_gw, research_gw.token(sub="research-1", role="research", scopes=("openai:*",))) as c:
        r = c.post(url, json=body)
    err = error_of(r)
    assert (r.status_code, err["code"]) == (403, "param_violation") and field in err["message"], err
    assert not vendor.received


@pytest.mark.parametrize(
    ("url", "body"),
    [
        (CHAT, {"messages": MESSAGES, "max_completion_tokens": 4000}),
        (CHAT, {"messages": MESSAGES, "max_completion_tokens": 100, "max_tokens": 100}),
        (RESPONSES, {"input": "hi", "max_output_tokens": 4000}),
    ],
)
def test_capped_output_goes_out(research_gw: GatewayProcess, vendor: FakeVendor, url: str, body: dict) -> None:
    with client(research_gw, research_gw.token(sub="research-2", role="research", scopes=("openai:*",))) as c:
        r = c.post(url, json={"model": "gpt-4o-mini", **body})
    assert r.status_code == 200, r.text
    assert len(vendor.received) == 1
