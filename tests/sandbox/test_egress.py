"""Host calls: the manifest's ceiling, the call budget, the ABI, and refusals as responses."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from gateway.errors import Refusal
from gateway.pipeline.call import new_decision_id
from sandbox.hostcall import EINVAL, AbiError, EgressSession
from sandbox.manifest import ToolManifest
from sandbox.registry import ToolRegistry


def test_currency_convert_calls_the_connector_and_converts(run, http_vendor, sender) -> None:  # type: ignore[no-untyped-def]
    result = run("currency_convert", {"to": "eur", "rates": {"usd": 0.5}}, role="finance", sender=sender)
    # available: 10000 usd * 0.5 + 2500 eur; pending: 400 usd * 0.5, 700 jpy has no rate
    assert result.output == {"currency": "eur", "available": 7500, "pending": 200, "unconverted": 1, "status": 200}
    assert result.host_calls == 1
    assert [(r["method"], r["path"], r["host"]) for r in http_vendor.seen] == [("GET", "/v1/balance", "api.stripe.com")]


def test_a_gateway_refusal_reaches_the_guest_as_a_response(run, http_vendor, sender) -> None:  # type: ignore[no-untyped-def]
    http_vendor.status = 429
    http_vendor.body = json.dumps({"error": {"code": "rate_limited", "message": "rule rate 20/minute"}})
    result = run("currency_convert", {"to": "eur"}, role="finance", sender=sender)
    assert result.output == {"status": 429, "error": "rate_limited"}


@pytest.mark.parametrize(
    ("method", "url", "why"),
    [
        ("POST", "https://api.openai.com/v1/chat/completions", "openai:chat_completions"),
        ("POST", "https://api.stripe.com/v1/payment_intents", "stripe:create_payment_intent"),
        ("GET", "https://169.254.169.254/latest/meta-data/", "matches no connector action"),
        ("GET", "http://api.stripe.com/v1/balance", "matches no connector action"),
    ],
)
def test_the_manifest_ceiling_refuses_what_the_sender_would_allow(  # type: ignore[no-untyped-def]
    run, http_vendor, sender, method: str, url: str, why: str
) -> None:
    result = run("fetch_any", {"method": method, "url": url}, sender=sender)
    assert result.output["status"] == 403
    assert result.output["error"] == "sandbox_forbidden"
    assert result.host_calls == 1
    assert http_vendor.seen == []  # the sender would have served it; the ceiling stopped it first


def test_the_refusal_body_names_the_connector_action(http_vendor, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    session = _session(sender, resolve, allowed=("stripe:retrieve_balance",), max_host_calls=1)
    raw = json.dumps({"method": "POST", "url": "https://api.openai.com/v1/chat/completions", "body": "{}"})
    response = json.loads(session.request(raw.encode()))
    assert response["status"] == 403
    error = json.loads(response["body"])["error"]
    assert response["headers"]["x-egress-decision-id"] == error["decision_id"] == session.decision_id
    assert session.decision_id.startswith("dec_")
    assert (error["code"], error["connector"], error["action"]) == ("sandbox_forbidden", "openai", "chat_completions")


def test_host_call_storm_is_capped(run, http_vendor, sender) -> None:  # type: ignore[no-untyped-def]
    result = run("host_storm", sender=sender)
    assert result.output == {"attempts": 1000, "ok": 5, "refused": 995, "last_error": "sandbox_forbidden"}
    assert result.host_calls == 5
    assert len(http_vendor.seen) == 5


def test_a_response_larger_than_the_guest_buffer_is_fetched_by_a_second_call(run, http_vendor, sender) -> None:  # type: ignore[no-untyped-def]
    http_vendor.body = json.dumps({"pad": "x" * 20000})
    result = run("fetch_any", {"url": "https://api.stripe.com/v1/balance"}, sender=sender)
    assert result.output == {"status": 200, "error": "", "body_bytes": len(http_vendor.body)}
    assert result.host_calls == 1  # the second read is not a new call
    assert len(http_vendor.seen) == 1


def test_the_guest_cannot_set_proxy_credentials_or_host(http_vendor, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    session = _session(sender, resolve, allowed=("stripe:*",), max_host_calls=1)
    raw = json.dumps({
        "method": "get", "url": "https://api.stripe.com/v1/balance",
        "headers": {"Proxy-Authorization": "Bearer stolen", "Host": "evil.example", "X-Trace": "1"},
    })
    assert json.loads(session.request(raw.encode()))["status"] == 200
    headers = http_vendor.seen[0]["headers"]
    assert "proxy-authorization" not in headers
    assert headers["host"] == "api.stripe.com"
    assert headers["x-trace"] == "1"


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", b'{"url": "https://api.stripe.com/v1/balance"}',
     b'{"method": "GET", "url": "file:///etc/passwd"}', b'{"method": "GET", "url": "https://x", "extra": 1}'],
)
def test_malformed_requests_are_abi_errors(raw: bytes, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    session = _session(sender, resolve, allowed=("stripe:*",), max_host_calls=5)
    with pytest.raises(AbiError) as e:
        session.request(raw)
    assert e.value.code == EINVAL
    assert session.calls == 0


def test_no_call_starts_after_the_deadline(http_vendor, sender, resolve) -> None:  # type: ignore[no-untyped-def]
    session = _session(sender, resolve, allowed=("stripe:*",), max_host_calls=5, deadline=time.monotonic() - 1)
    raw = json.dumps({"method": "GET", "url": "https://api.stripe.com/v1/balance"}).encode()
    response = json.loads(session.request(raw))
    assert json.loads(response["body"])["error"]["code"] == "sandbox_timeout"
    assert http_vendor.seen == []


def test_a_failing_sender_fails_closed_without_leaking_its_message(resolve) -> None:  # type: ignore[no-untyped-def]
    def broken(request: dict[str, Any]) -> dict[str, Any]:
        raise ConnectionError("proxy http://agent:SECRET-TOKEN@127.0.0.1:8080 refused")

    def malformed(request: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok"}

    raw = json.dumps({"method": "GET", "url": "https://api.stripe.com/v1/balance"}).encode()
    for sender, code in ((broken, "upstream_failed"), (malformed, "internal_error")):
        response = json.loads(_session(sender, resolve, allowed=("stripe:*",), max_host_calls=1).request(raw))
        assert json.loads(response["body"])["error"]["code"] == code
        assert "SECRET" not in response["body"]


def test_role_not_in_the_manifest_is_refused(run) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Refusal) as e:
        run("currency_convert", {"to": "eur"}, role="research")
    assert (e.value.code, e.value.status) == ("sandbox_forbidden", 403)


def test_unknown_tool(run) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Refusal) as e:
        run("no_such_tool")
    assert (e.value.code, e.value.status) == ("sandbox_unknown_tool", 404)


def test_tool_list_shows_only_what_the_role_may_run(registry: ToolRegistry) -> None:
    assert "currency_convert" in registry.visible_to("finance")
    assert "currency_convert" not in registry.visible_to("research")
    assert "stats" in registry.visible_to("research")


def _session(sender, resolve, allowed: tuple[str, ...], max_host_calls: int, deadline: float | None = None) -> EgressSession:  # type: ignore[no-untyped-def]
    manifest = ToolManifest(
        name="probe", module="tool.wasm", sha256="0" * 64, allowed=allowed,
        limits={"max_host_calls": max_host_calls},  # type: ignore[arg-type]
    )
    return EgressSession(
        manifest=manifest, http_request=sender, resolve_action=resolve,
        deadline=time.monotonic() + 60 if deadline is None else deadline, clock=time.monotonic,
        decision_id=new_decision_id(),
    )
