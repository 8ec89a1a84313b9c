"""The DLP evasion classes through the real proxy, on generated corpora: what the fake vendor
received never holds the raw value, and the agent whose policy may reveal gets it back restored.

Values split by any separator, spaced and worded addresses, text encoded as base64, base64url or
hex inside a string field, and PII as a JSON number outside the text fields (refused), with form
bodies and query strings checked too."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.clients import client, error_of
from tests.dlp.evasion_corpus import clean_samples, email_samples, encoded, split_samples
from tests.dlp.user_corpus import Gen
from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

CHAT = "https://api.openai.com/v1/chat/completions"
TOKEN = re.compile(r"tok_[A-Z_]+_[a-z2-7]{20}")
TYPES = "[EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE, US_SSN, PERSON]"
POLICY = f"""
version: 1
subjects: {{roles: [revealer]}}
rules:
  - connector: openai
    actions: [chat_completions]
  - connector: stripe
    actions: [create_customer]
  - connector: serpapi
    actions: [search]
dlp:
  tokenize: {TYPES}
  reveal: {TYPES}
---
version: 1
subjects: {{roles: [masker]}}
rules:
  - connector: openai
    actions: [chat_completions]
dlp:
  mask: [CREDIT_CARD, US_SSN, PHONE_NUMBER]
  block: [EMAIL_ADDRESS]
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("dlp-evasion")
    policies = root / "policies"
    policies.mkdir()
    for i, doc in enumerate(POLICY.split("---")):
        (policies / f"p{i}.yaml").write_text(doc)
    with GatewayProcess(root, vendor_settings(pki, vendor_server, policies=str(policies))).start() as g:
        yield g


def agent(gw: GatewayProcess, role: str = "revealer") -> httpx.Client:
    return client(gw, gw.token(sub=f"evasion-{role}", role=role, tenant="acme", scopes=("*",)))


def chat(*contents: str, **extra: object) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": c} for c in contents], **extra}


def detokenize(gw: GatewayProcess, text: str, role: str = "revealer") -> str:
    token = gw.token(sub=f"evasion-{role}", role=role, tenant="acme", scopes=("*",))
    r = httpx.post(f"{gw.api_url}/v1/detokenize", json={"text": text}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r.json()["text"]


def test_split_values_and_spaced_addresses_leave_as_tokens_and_come_back_restored(gw: GatewayProcess, vendor: FakeVendor) -> None:
    """A generated corpus of 4 numeric types split by every kind of gap, and of obfuscated addresses:
    each value leaves as exactly one token, and the echo comes back to this agent restored."""
    samples = split_samples(201, 40) + email_samples(202, 20)
    with agent(gw) as c:
        r = c.post(CHAT, json=chat(*(s.text for s in samples)))
    assert r.status_code == 200, r.text
    sent = [m["content"] for m in vendor.received[-1].json()["messages"]]
    for s, out in zip(samples, sent, strict=True):
        (g,) = s.gold
        kind = g.entity_type
        assert s.text[g.start : g.end] not in out
        assert re.sub(rf"tok_{kind}_[a-z2-7]{{20}}", "T", out) == s.text[: g.start] + "T" + s.text[g.end :]
    echoed = json.loads(r.json()["echo"], strict=False)  # the echo is JSON text: restored values hold raw line breaks
    assert [m["content"] for m in echoed["messages"]] == [s.text for s in samples]


def test_pii_free_numbers_and_prose_reach_the_vendor_untouched(gw: GatewayProcess, vendor: FakeVendor) -> None:
    clean = clean_samples(203, 120)
    with agent(gw) as c:
        r = c.post(CHAT, json=chat(*clean))
    assert r.status_code == 200, r.text
    assert [m["content"] for m in vendor.received[-1].json()["messages"]] == clean


@pytest.mark.parametrize("how", ["base64", "base64url", "hex"])
def test_encoded_text_is_tokenized_inside_its_encoding(gw: GatewayProcess, vendor: FakeVendor, how: str) -> None:
    """Each value of a generated set is hidden in its own encoded sentence: the vendor gets the same
    encoding of the sentence with a token in place of the value, which the agent can restore."""
    gen = Gen({"base64": 204, "base64url": 205, "hex": 206}[how])
    values = [gen.value(kind) for kind in ("EMAIL_ADDRESS", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "PHONE_NUMBER") for _ in range(3)]
    clear = [f"customer record: {v} (verified)" for v in values]
    contents = [f"attachment {encoded(t, how)} end" for t in clear]
    with agent(gw) as c:
        r = c.post(CHAT, json=chat(*contents))
    assert r.status_code == 200, r.text
    sent = [m["content"] for m in vendor.received[-1].json()["messages"]]
    for value, text, out in zip(values, clear, sent, strict=True):
        blob = out.removeprefix("attachment ").removesuffix(" end")
        inner = bytes.fromhex(blob).decode() if how == "hex" else base64.b64decode(blob + "=" * (-len(blob) % 4), altchars=b"-_").decode()
        assert value not in inner and encoded(text, how) not in out
        assert TOKEN.fullmatch(inner.removeprefix("customer record: ").removesuffix(" (verified)")), inner
        assert detokenize(gw, inner) == text
    # Binary (an image's bytes) and text without PII leave exactly as sent.
    image = base64.b64encode(bytes(range(256)) * 4).decode()
    plain = encoded("the quarterly report is attached, nothing personal", how)
    with agent(gw) as c:
        assert c.post(CHAT, json=chat(image, plain)).status_code == 200
    assert [m["content"] for m in vendor.received[-1].json()["messages"]] == [image, plain]


def test_wrapped_base64_block_is_one_value_written_back_in_lines_of_its_width(gw: GatewayProcess, vendor: FakeVendor) -> None:
    """A MIME-wrapped attachment (76-character lines, CRLF or LF): values cut across a line break
    are found, and the block leaves as lines of the same width holding tokens."""
    gen = Gen(208)
    letters = [
        "\n".join(f"Customer record: mail {gen.email()}, card {gen.card()}, phone {gen.phone()}, ssn {gen.ssn()}." for _ in range(6))
        for _ in range(2)
    ]
    blocks = [base64.encodebytes(letters[0].encode()).decode(), base64.encodebytes(letters[1].encode()).decode().replace("\n", "\r\n")]
    with agent(gw) as c:
        r = c.post(CHAT, json=chat(*(f"attachment:\n{b}end" for b in blocks)))
    assert r.status_code == 200, r.text
    for letter, block, out in zip(letters, blocks, [m["content"] for m in vendor.received[-1].json()["messages"]], strict=True):
        newline = "\r\n" if "\r\n" in block else "\n"
        lines = out.removeprefix("attachment:\n").removesuffix("end").split(newline)[:-1]
        assert {len(line) for line in lines[:-1]} == {76} and 0 < len(lines[-1]) <= 76
        inner = base64.b64decode("".join(lines)).decode()
        assert len(TOKEN.findall(inner)) == 6 * 4
        assert detokenize(gw, inner) == letter


def test_encoded_value_of_a_blocked_type_refuses_the_call(gw: GatewayProcess, vendor: FakeVendor) -> None:
    sent = len(vendor.received)
    with agent(gw, "masker") as c:
        r = c.post(CHAT, json=chat("hello", f"see {encoded('mail jane.doe@example.com', 'base64')}"))
    err = error_of(r)
    assert (r.status_code, err["code"], err["entity_type"]) == (403, "pii_blocked", "EMAIL_ADDRESS")
    assert err["field"] == "messages[1].content (encoded)" and len(vendor.received) == sent


@pytest.mark.parametrize(
    ("body", "field", "kind"),
    [
        ({"seed": 4111111111111111}, "seed", "CREDIT_CARD"),
        ({"seed": 6011000990139424.0}, "seed", "CREDIT_CARD"),
        ({"seed": -5555555555554444}, "seed", "CREDIT_CARD"),
    ],
)
def test_pii_as_a_json_number_outside_the_text_fields_is_refused(
    gw: GatewayProcess, vendor: FakeVendor, body: dict, field: str, kind: str
) -> None:
    """A number cannot carry a token: a card number as `seed` is refused, never forwarded."""
    sent = len(vendor.received)
    with agent(gw) as c:
        r = c.post(CHAT, json=chat("hi", **body))
    err = error_of(r)
    assert (r.status_code, err["code"], err["entity_type"], err["field"]) == (403, "pii_blocked", kind, field)
    assert len(vendor.received) == sent
    assert str(abs(int(next(iter(body.values()))))) not in r.text + gw.audit_file.read_text()


def test_numbers_that_are_no_pii_and_masked_numbers(gw: GatewayProcess, vendor: FakeVendor) -> None:
    """Ordinary seeds (small, 32-bit ones that look like US phones, 20-digit, Luhn-invalid) leave as
    they are; under a mask policy a card number as `seed` leaves as its mask, never raw."""
    with agent(gw) as c:
        for seed in (42, 1733480000, 2125550199, 3000000000, 4111111111111112, 12345678901234567890):
            r = c.post(CHAT, json=chat("hi", seed=seed))
            assert r.status_code == 200, r.text
            assert vendor.received[-1].json()["seed"] == seed
    with agent(gw, "masker") as c:
        r = c.post(CHAT, json=chat("hi", seed=5555555555554444))
    assert r.status_code == 200, r.text
    assert vendor.received[-1].json()["seed"] == "****4444"


def test_openai_sdk_json_schemas_keep_their_numeric_bounds(gw: GatewayProcess, vendor: FakeVendor) -> None:
    """The openai SDK's `tools` and `response_format` schemas are scanned (they hold text), but a
    bound such as INT32_MAX (2147483647, a valid US number) is a number: it reached the vendor as a
    string token, which the vendor refuses as a schema. A key that names a phone still tokenizes."""
    sdk = openai.OpenAI(api_key="sk-agent-holds-none", http_client=agent(gw), max_retries=0)
    bounded = {"type": "object", "properties": {"order_id": {"type": "integer", "minimum": 1000000000, "maximum": 2147483647}}}
    tools: list[dict] = [{"type": "function", "function": {"name": "get_order", "description": "Look up an order", "parameters": bounded}}]
    response_format: dict = {"type": "json_schema", "json_schema": {"name": "order", "schema": bounded}}
    sdk.chat.completions.with_raw_response.create(  # type: ignore[call-overload]  # plain dicts, as users write them
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], tools=tools, response_format=response_format,
    )
    sent = vendor.received[-1].json()
    assert (sent["tools"], sent["response_format"]) == (tools, response_format)
    tools[0]["function"]["parameters"] = {"type": "object", "properties": {}, "x-support-phone": 2125550199}
    sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], tools=tools)  # type: ignore[arg-type]
    assert str(vendor.received[-1].json()["tools"][0]["function"]["parameters"]["x-support-phone"]).startswith("tok_PHONE_NUMBER_")


def test_a_float_card_number_inside_a_text_field_becomes_its_token(gw: GatewayProcess, vendor: FakeVendor) -> None:
    """Read as text, `4111111111111111.0` was no card (the `.0` glued a digit to it) and left raw."""
    content = [{"type": "text", "text": "pay with"}, {"type": "text", "text": 4111111111111111.0}]
    with agent(gw) as c:
        r = c.post(CHAT, json={"model": "m", "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200, r.text
    sent = vendor.received[-1].json()["messages"][0]["content"][1]["text"]
    assert sent.startswith("tok_CREDIT_CARD_") and "4111111111111111" not in vendor.received[-1].body.decode()
    assert detokenize(gw, sent) == "4111111111111111"


def test_form_bodies_and_query_strings_are_read_as_text(gw: GatewayProcess, vendor: FakeVendor) -> None:
    """There every value is a string already: split and encoded values leave as tokens."""
    gen = Gen(207)
    card = "4111\t1111 - 1111\u00a01111"
    mail = gen.email().replace("@", " @ ")
    hidden = encoded(f"ssn {gen.value('US_SSN')}", "base64url")
    with agent(gw) as c:
        r = c.post("https://api.stripe.com/v1/customers", data={"description": f"card {card}", "metadata[n]": mail, "name": hidden})
        assert r.status_code == 200, r.text
        form = vendor.received[-1].body.decode()
        r = c.get("https://serpapi.com/search.json", params={"q": f"who is {mail}", "location": card})
        assert r.status_code == 200, r.text
    query = vendor.received[-1].path
    for raw in (card, mail, hidden):
        for quoted in (raw, httpx.QueryParams({"x": raw}).__str__()[2:]):
            assert quoted not in form and quoted not in query
    assert form.count("tok_CREDIT_CARD_") == 1 and form.count("tok_EMAIL_ADDRESS_") == 1
    assert query.count("tok_CREDIT_CARD_") == 1 and query.count("tok_EMAIL_ADDRESS_") == 1
