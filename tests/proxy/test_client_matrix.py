"""The clients agents use, configured by nothing but the exports of `egress-gateway env`, through one
real gateway to the fake vendor: every allowed call arrives with the injected credential (never the
agent's own), and every refusal reaches the client as the contract's JSON error.

urllib, requests, httpx and the OpenAI SDK run in this process with the environment set as
`eval "$(egress-gateway env)"` sets it (each reads it when it builds its client or sends); aiohttp
(which reads SSL_CERT_FILE when it is imported), curl and Node run as fresh processes with exactly
that environment. Node 20 has no proxy support of its own, so its `https.request` goes
through a CONNECT tunnel opened with core `http`, as a proxy agent does; its built-in `fetch`
ignores HTTPS_PROXY (a Node limitation, in the README's client notes).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import requests
from hyperframe.frame import Frame, GoAwayFrame, SettingsFrame

from gateway.cli.agent_env import CA_VARIABLES, PROXY_VARIABLES, proxy_url
from gateway.pipeline.decision import HTTP2_REFUSED
from tests.cli.env_clients import CLEARED, clean_env
from tests.clients import basic, raw_connect, read_response, trusting
from tests.fakes import PKI, VENDOR_ENV, FakeVendor, vendor_settings
from tests.processes import GatewayProcess

STRIPE_KEY = VENDOR_ENV["TEST_STRIPE_KEY"]
OPENAI_KEY = VENDOR_ENV["TEST_OPENAI_KEY"]
AGENT_KEY = "sk_agent_own_key_must_never_arrive"
BALANCE = "https://api.stripe.com/v1/balance"
PAYMENTS = "https://api.stripe.com/v1/payment_intents"
DENIED = "https://api.stripe.com/v1/customers"  # list_customers: a stripe action no rule allows
UNCLAIMED = "https://llm-relay.example/v1/chat"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
POLICY = """\
version: 1
subjects: {roles: [matrix]}
mode: enforce
rules:
  - name: matrix-stripe
    connector: stripe
    actions: [retrieve_balance, create_payment_intent]
  - name: matrix-chat
    connector: openai
    actions: [chat_completions]
  - name: matrix-embeddings          # a second call within the second is refused, Retry-After: 1
    connector: openai
    actions: [embeddings]
    rate: 1/second
  - name: matrix-responses           # the second call of the hour is refused, Retry-After: ~3600
    connector: openai
    actions: [responses]
    rate: 1/hour
"""

# Node 20: one request through a CONNECT tunnel (the proxy and CA from the environment alone),
# printed as JSON. A written body goes out chunked, Node's default without a Content-Length.
NODE = r"""
const http = require("http"), https = require("https");
const proxy = new URL(process.env.HTTPS_PROXY), target = new URL(process.env.REQ_URL);
const auth = Buffer.from(decodeURIComponent(proxy.username) + ":" + decodeURIComponent(proxy.password)).toString("base64");
const port = target.port || 443;
const tunnel = http.request({host: proxy.hostname, port: proxy.port, method: "CONNECT", path: target.hostname + ":" + port,
                             headers: {"Proxy-Authorization": "Basic " + auth}});
tunnel.on("connect", (res, socket) => {
  const req = https.request({host: target.hostname, port, path: target.pathname + target.search, socket, agent: false,
                             servername: target.hostname, method: process.env.REQ_METHOD,
                             headers: JSON.parse(process.env.REQ_HEADERS)}, (resp) => {
    const chunks = [];
    resp.on("data", (d) => chunks.push(d));
    resp.on("end", () => {
      console.log(JSON.stringify({status: resp.statusCode, headers: resp.headers, body: Buffer.concat(chunks).toString("latin1")}));
      socket.destroy();
    });
  });
  req.on("error", (e) => { console.error(e.code || e.message); process.exit(1); });
  if (process.env.REQ_BODY) req.write(process.env.REQ_BODY);
  req.end();
});
tunnel.on("error", (e) => { console.error(e.message); process.exit(1); });
tunnel.end();
"""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def error(self) -> dict[str, object]:
        """The contract's error object, its decision id the header's."""
        assert self.headers.get("content-type", "").startswith("application/json"), self
        body = json.loads(self.body)
        assert set(body) == {"error"}, body
        assert body["error"]["decision_id"] == self.headers["x-egress-decision-id"]
        return body["error"]


@dataclass
class Agent:
    """One agent's token and the environment `egress-gateway env` gives it."""

    gw: GatewayProcess
    sub: str
    token: str
    proxy: str | None = None  # a proxy URL written by hand, instead of `env`'s

    @property
    def env(self) -> dict[str, str]:
        proxy = self.proxy or proxy_url(f"127.0.0.1:{self.gw.port}", self.sub, self.token)
        return {**dict.fromkeys(PROXY_VARIABLES, proxy), **dict.fromkeys(CA_VARIABLES, str(self.gw.ca_file))}

    def export(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """This process's environment becomes the agent's exports (for the in-process clients)."""
        for name in [n for n in os.environ if CLEARED.match(n)]:  # the runner's own proxy or CA settings
            monkeypatch.delenv(name)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)

    def records(self, count: int) -> list[dict[str, Any]]:
        """This agent's audit records, once there are `count` of them: a refusal is audited just
        after it is sent (`Runtime.record_after`), so the client may read it first. More than
        `count` fails the caller's exact comparison."""
        deadline = time.monotonic() + 10
        while True:
            mine = [r for r in self.gw.audit() if r.get("sub") == self.sub]
            if len(mine) >= count or time.monotonic() > deadline:
                return mine
            time.sleep(0.05)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("client-matrix")
    (root / "policies").mkdir()
    (root / "policies" / "matrix.yaml").write_text(POLICY)
    settings = vendor_settings(pki, vendor_server, timeouts={"connect": "2s", "read": "5s"}, policies=str(root / "policies"))
    with GatewayProcess(root / "gw", settings).start() as gateway:
        yield gateway


def _agent(gw: GatewayProcess, monkeypatch: pytest.MonkeyPatch, sub: str | None = None) -> Agent:
    """A fresh agent (its own rate limits) whose exports are this process's environment."""
    sub = sub or f"matrix-{uuid.uuid4().hex[:8]}"
    agent = Agent(gw, sub, gw.token(sub=sub, role="matrix", scopes=("*",)))
    agent.export(monkeypatch)
    return agent


@pytest.fixture
def agent(gw: GatewayProcess, monkeypatch: pytest.MonkeyPatch) -> Agent:
    return _agent(gw, monkeypatch)


# --- the clients: (agent, method, url, headers, body) -> Answer -------------------------------

Client = Callable[[Agent, str, str, dict[str, str], bytes | None], Answer]


def _urllib(agent: Agent, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Answer:
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    # A new opener: `urlopen`'s global one keeps the proxy of the environment it was first built in.
    try:
        with urllib.request.build_opener().open(req, timeout=20) as r:
            return Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def _requests(agent: Agent, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Answer:
    r = requests.request(method, url, headers=headers, data=body, timeout=20)
    return Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)


def _httpx_h2(agent: Agent, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Answer:
    """httpx offering HTTP/2 (ALPN h2, http/1.1): the gateway picks HTTP/1.1 in the tunnel."""
    with httpx.Client(http2=True, timeout=20) as c:
        r = c.request(method, url, headers=headers, content=body)
    assert r.http_version == "HTTP/1.1"
    return Answer(r.status_code, dict(r.headers), r.content)


def _httpx_async_h2(agent: Agent, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Answer:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(http2=True, timeout=20) as c:
            return await c.request(method, url, headers=headers, content=body)

    r = asyncio.run(call())
    return Answer(r.status_code, dict(r.headers), r.content)


# aiohttp builds its default TLS context when imported, so it reads SSL_CERT_FILE then: it runs
# in a fresh interpreter, as an agent starts. It reads HTTPS_PROXY only with `trust_env=True`
# (its default is False: README).
AIOHTTP = """
import asyncio, json, os, aiohttp
async def main():
    async with aiohttp.ClientSession(trust_env=True, timeout=aiohttp.ClientTimeout(total=20)) as s:
        async with s.request(os.environ["REQ_METHOD"], os.environ["REQ_URL"], headers=json.loads(os.environ["REQ_HEADERS"]),
                             data=os.environ["REQ_BODY"].encode() or None) as r:
            body = await r.read()
            print(json.dumps({"status": r.status, "headers": {k.lower(): v for k, v in r.headers.items()}, "body": body.decode("latin-1")}))
asyncio.run(main())
"""


def _aiohttp(agent: Agent, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Answer:
    return _run_json([sys.executable, "-c", AIOHTTP], agent, method, url, headers, body)


def _curl(*flags: str) -> Client:
    def run(agent: Agent, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Answer:
        args = ["curl", "-sS", "--max-time", "20", "-X", method, "-D", "-", *flags, url]
        for name, value in headers.items():
            args += ["-H", f"{name}: {value}"]
        if body is not None:
            args += ["--data-binary", "@-"]
        out = subprocess.run(args, input=body or b"", capture_output=True, env=clean_env(agent.env), timeout=30)
        assert out.returncode == 0, out.stderr
        return _parse_curl(out.stdout)

    return run


def _parse_curl(out: bytes) -> Answer:
    """curl's `-D -` output: the proxy's CONNECT answer, then the response; the last head wins."""
    heads = []
    while out.startswith(b"HTTP/"):
        head, _, out = out.partition(b"\r\n\r\n")
        heads.append(head)
    lines = heads[-1].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return Answer(int(lines[0].split()[1]), headers, out)


def _node(agent: Agent, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Answer:
    return _run_json(["node", "-e", NODE], agent, method, url, headers, body)


def _run_json(argv: list[str], agent: Agent, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Answer:
    """A client program run with exactly the agent's exports, given the request in REQ_* variables;
    it prints the answer as JSON (the body as Latin-1)."""
    req = {"REQ_METHOD": method, "REQ_URL": url, "REQ_HEADERS": json.dumps(headers), "REQ_BODY": (body or b"").decode()}
    out = subprocess.run(argv, capture_output=True, text=True, env=clean_env({**agent.env, **req}), timeout=30)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    return Answer(got["status"], got["headers"], got["body"].encode("latin-1"))


CLIENTS: dict[str, Client] = {
    "urllib": _urllib,
    "requests": _requests,
    "httpx-h2": _httpx_h2,
    "httpx-async-h2": _httpx_async_h2,
    "aiohttp": _aiohttp,
    "curl": _curl(),
    "curl-http1.0": _curl("--http1.0"),
    "curl-http2": _curl("--http2"),
    "curl-http2-prior-knowledge": _curl("--http2-prior-knowledge"),  # over TLS it still asks by ALPN: HTTP/1.1
    "node": _node,
}


def _client(kind: str) -> Client:
    if kind == "node" and shutil.which("node") is None:
        pytest.skip("node is not installed (.ci/run installs Debian's nodejs)")
    return CLIENTS[kind]


# --- every client: allowed and refused ---------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENTS)
def test_an_allowed_call_arrives_with_the_injected_key_only(agent: Agent, vendor: FakeVendor, kind: str) -> None:
    call = _client(kind)
    got = call(agent, "GET", BALANCE, {"Authorization": f"Bearer {AGENT_KEY}"}, None)
    assert got.status == 200 and json.loads(got.body)["host"] == "api.stripe.com", got
    body = b"amount=100&currency=usd&description=order+7"
    posted = call(agent, "POST", PAYMENTS, {**FORM, "Authorization": f"Bearer {AGENT_KEY}"}, body)
    assert posted.status == 200, posted
    assert [(r.method, r.path, r.body) for r in vendor.received] == [("GET", "/v1/balance", b""), ("POST", "/v1/payment_intents", body)]
    for rec in vendor.received:
        assert rec.headers["authorization"] == f"Bearer {STRIPE_KEY}"
        assert AGENT_KEY not in str(rec.headers) and "proxy-authorization" not in rec.headers
    assert [(r["phase"], r["decision"]) for r in agent.records(4)] == [("decision", "allow"), ("outcome", "allow")] * 2


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(("url", "status", "code"), [(DENIED, 403, "policy_denied"), (UNCLAIMED, 403, "host_denied")])
def test_a_refusal_reaches_the_client_as_the_json_error(
    agent: Agent, vendor: FakeVendor, kind: str, url: str, status: int, code: str
) -> None:
    got = _client(kind)(agent, "GET", url, {"Authorization": f"Bearer {AGENT_KEY}"}, None)
    err = got.error()
    assert (got.status, err["code"]) == (status, code)
    assert [(r["decision_id"], r["code"]) for r in agent.records(1)] == [(err["decision_id"], code)]
    assert not vendor.received


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_forged_token_reaches_the_client_as_the_json_407(agent: Agent, vendor: FakeVendor, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Refused at CONNECT, answered inside the tunnel: no client takes it for the proxy's own 407."""
    agent.token = agent.token[:-8] + "AAAAAAAA"
    agent.export(monkeypatch)
    got = _client(kind)(agent, "GET", BALANCE, {}, None)
    assert (got.status, got.error()["code"]) == (407, "identity_invalid")
    assert got.headers["proxy-authenticate"].startswith("Basic")
    assert not vendor.received


# --- curl's variants ---------------------------------------------------------------------------


def _curl_run(agent: Agent, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, env=clean_env(agent.env), timeout=30)


@pytest.mark.parametrize(
    "flags",
    [
        ["-H", "Expect: 100-continue"],
        ["-H", "Transfer-Encoding: chunked"],
        ["-H", "Transfer-Encoding: chunked", "-H", "Expect: 100-continue"],
    ],
    ids=["expect-100", "chunked", "chunked-expect-100"],
)
def test_curl_uploads_arrive_whole(agent: Agent, vendor: FakeVendor, tmp_path: Path, flags: list[str]) -> None:
    body = b"amount=100&currency=usd&description=" + b"x" * 900
    (tmp_path / "body").write_bytes(body)
    out = _curl_run(agent, "-D", "-", "-H", "Content-Type: application/x-www-form-urlencoded", *flags,
                    "--data-binary", f"@{tmp_path / 'body'}", PAYMENTS)
    assert _parse_curl(out.stdout).status == 200, out
    assert [(r.path, r.body) for r in vendor.received] == [("/v1/payment_intents", body)]


def test_curl_compressed_gets_the_answer_plain_and_the_vendor_is_asked_plain(agent: Agent, vendor: FakeVendor) -> None:
    out = _curl_run(agent, "--compressed", "-D", "-", BALANCE)
    got = _parse_curl(out.stdout)
    assert got.status == 200 and json.loads(got.body)["host"] == "api.stripe.com"
    assert vendor.received[-1].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    ("args", "status", "code"),
    [
        (["-X", "OPTIONS", BALANCE], 403, "unknown_action"),
        (["https://api.stripe.com:8443/v1/balance"], 403, "host_denied"),
        (["https://[::1]/v1/balance"], 403, "host_denied"),
        (["https://[2606:4700::1111]/v1/balance"], 403, "host_denied"),
        (["--proxytunnel", "--proxy", "PROXY", "http://api.stripe.com/v1/balance"], 403, "host_denied"),  # port 80
        (["--proxy", "PROXY", "http://api.stripe.com/v1/balance"], 403, "plain_http_denied"),
    ],
    ids=["options", "port-8443", "ipv6-loopback", "ipv6-public", "proxytunnel-http", "plain-http"],
)
def test_curl_refusals_are_json(agent: Agent, vendor: FakeVendor, args: list[str], status: int, code: str) -> None:
    args = [agent.env["HTTPS_PROXY"] if a == "PROXY" else a for a in args]
    got = _parse_curl(_curl_run(agent, "-D", "-", *args).stdout)
    assert (got.status, got.error()["code"]) == (status, code)
    assert not vendor.received


def test_curl_proxy_anyauth_takes_the_407_in_the_tunnel_as_its_challenge(agent: Agent, vendor: FakeVendor) -> None:
    """A client that sends credentials only when challenged: its first CONNECT carries none, so the
    tunnel answers the JSON 407 with `Proxy-Authenticate`, and curl connects again with them."""
    out = _curl_run(agent, "-v", "--proxy", f"http://127.0.0.1:{agent.gw.port}", "--proxy-user", f"agent:{agent.token}",
                    "--proxy-anyauth", BALANCE)
    assert out.returncode == 0 and json.loads(out.stdout)["host"] == "api.stripe.com", out.stderr
    assert out.stderr.count(b"> CONNECT api.stripe.com:443") == 2 and b"X-Egress-Error: identity_missing" in out.stderr
    assert len(vendor.received) == 1


def test_curl_head_and_a_fragment(agent: Agent, vendor: FakeVendor) -> None:
    """HEAD is no action (a 403 whose head names the decision; a HEAD answer has no body), and a
    fragment never leaves the client."""
    head = _parse_curl(_curl_run(agent, "-I", BALANCE).stdout)
    assert head.status == 403 and head.body == b""
    assert [r["code"] for r in agent.records(1) if r["decision_id"] == head.headers["x-egress-decision-id"]] == ["unknown_action"]
    got = _parse_curl(_curl_run(agent, "-D", "-", BALANCE + "#section").stdout)
    assert got.status == 200 and [r.path for r in vendor.received] == ["/v1/balance"]


# --- HTTP/2 ------------------------------------------------------------------------------------


def _frames(data: bytes) -> list[Frame]:
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize()


def test_an_http2_only_client_gets_goaway_http_1_1_required_with_the_json(agent: Agent, vendor: FakeVendor) -> None:
    """httpx with `http1=False` sends the HTTP/2 preface whatever ALPN said. mitmproxy killed that
    flow: the client saw the connection drop, and the audit held two records for it."""
    with httpx.Client(http1=False, http2=True, timeout=20) as c, pytest.raises(httpx.RemoteProtocolError) as e:
        c.get(BALANCE)
    assert "error_code:13" in str(e.value)  # HTTP_1_1_REQUIRED
    sock, _ = raw_connect(agent.gw, "api.stripe.com", basic(agent.token))
    ctx = trusting(agent.gw)
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(sock, server_hostname="api.stripe.com")
    tls.sendall(PREFACE)
    settings, goaway = _frames(_read_all(tls))  # then the connection closes
    tls.close()
    assert isinstance(settings, SettingsFrame) and isinstance(goaway, GoAwayFrame)
    assert (goaway.error_code, goaway.last_stream_id) == (0xD, 0)
    err = json.loads(goaway.additional_data)["error"]
    assert (err["code"], err["message"]) == ("bad_request", HTTP2_REFUSED)
    records = agent.records(2)
    assert [r["code"] for r in records] == ["bad_request", "bad_request"]  # one each, the httpx call's and this one
    assert records[-1]["decision_id"] == err["decision_id"]
    assert not vendor.received


def test_an_http2_preface_to_the_proxy_itself_gets_goaway_too(gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(PREFACE)
        settings, goaway = _frames(_read_all(sock))
    assert isinstance(settings, SettingsFrame) and isinstance(goaway, GoAwayFrame) and goaway.error_code == 0xD
    err = json.loads(goaway.additional_data)["error"]
    assert err["code"] == "bad_request"  # mitmproxy's regular mode reads no `*` target: a malformed proxy request
    deadline = time.monotonic() + 10
    while not (records := [r for r in gw.audit() if r["decision_id"] == err["decision_id"]]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["code"] for r in records] == ["bad_request"]


def test_an_h2c_upgrade_request_is_answered_as_http1_and_never_forwards_the_upgrade(agent: Agent, vendor: FakeVendor) -> None:
    """mitmproxy's DisableH2C addon, which the gateway leaves out, removed these headers; the
    pipeline forwards only what it declares."""
    headers = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAAQAAP__"}
    got = _urllib(agent, "GET", BALANCE, headers, None)
    assert got.status == 200
    assert not {"upgrade", "http2-settings"} & set(vendor.received[-1].headers)


# --- the OpenAI SDK -----------------------------------------------------------------------------


def _chat(content: str) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}


def test_openai_streams_and_raw_responses(agent: Agent, vendor: FakeVendor) -> None:
    sdk = openai.OpenAI(api_key=AGENT_KEY, max_retries=0, timeout=20)
    stream = sdk.chat.completions.create(**_chat("stream me"), stream=True)  # type: ignore[call-overload]
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "You said: stream me"
    raw = sdk.chat.completions.with_raw_response.create(**_chat("raw"))  # type: ignore[call-overload]
    assert raw.status_code == 200 and raw.headers["x-egress-decision-id"].startswith("dec_")
    assert [r.headers["authorization"] for r in vendor.received] == [f"Bearer {OPENAI_KEY}"] * 2


def test_openai_async_streams_and_reads_a_refusal(agent: Agent, vendor: FakeVendor) -> None:
    async def run() -> tuple[str, openai.PermissionDeniedError]:
        sdk = openai.AsyncOpenAI(api_key=AGENT_KEY, timeout=20)
        stream = await sdk.chat.completions.create(**_chat("async"), stream=True)  # type: ignore[call-overload]
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        try:
            await sdk.moderations.create(input="x")
        except openai.PermissionDeniedError as e:
            return text, e
        raise AssertionError("the refusal was not raised")

    text, refused = asyncio.run(run())
    assert text == "You said: async"
    assert isinstance(refused.body, dict) and refused.body["code"] == "unknown_action"
    assert str(refused.body["message"]) in refused.message
    assert [r.path for r in vendor.received] == ["/v1/chat/completions"]


def test_openai_waits_the_retry_after_of_a_short_rate_limit(agent: Agent, vendor: FakeVendor) -> None:
    """Retry-After: 1 is honoured: one refused attempt, then the retry passes (no burst of retries)."""
    sdk = openai.OpenAI(api_key=AGENT_KEY, max_retries=5, timeout=20)
    for text in ("one", "two"):
        assert sdk.embeddings.with_raw_response.create(model="text-embedding-3-small", input=text).status_code == 200
    decisions = [(r["decision"], r["code"]) for r in agent.records(5) if r["phase"] == "decision"]
    assert decisions == [("allow", None), ("deny", "rate_limited"), ("allow", None)]
    assert len(vendor.received) == 2


def test_openai_does_not_retry_a_rate_limit_of_an_hour(agent: Agent, vendor: FakeVendor) -> None:
    """Retry-After over the SDK's two minutes: it raises at once, with the gateway's message."""
    sdk = openai.OpenAI(api_key=AGENT_KEY, max_retries=5, timeout=20)
    sdk.responses.with_raw_response.create(model="gpt-4o-mini", input="first")
    with pytest.raises(openai.RateLimitError) as e:
        sdk.responses.with_raw_response.create(model="gpt-4o-mini", input="second")
    assert int(e.value.response.headers["retry-after"]) > 120
    assert isinstance(e.value.body, dict) and e.value.body["code"] == "rate_limited"
    assert str(e.value.body["message"]) in e.value.message
    assert [r["code"] for r in agent.records(3) if r["phase"] == "decision"] == [None, "rate_limited"]
    assert len(vendor.received) == 1


# --- proxy credentials ---------------------------------------------------------------------------


def _basic_bytes(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


CREDENTIALS: dict[str, Callable[[str], str]] = {
    "user:token": lambda t: basic(t),
    "token as user, empty password": lambda t: _basic_bytes(t.encode() + b":"),
    "token alone": lambda t: _basic_bytes(t.encode()),
    "colon in user": lambda t: _basic_bytes(b"team:agent-1:" + t.encode()),
    "latin-1 user (requests, aiohttp)": lambda t: _basic_bytes("agent-é".encode("latin-1") + b":" + t.encode()),
    "utf-8 user (curl)": lambda t: _basic_bytes("エージェント".encode() + b":" + t.encode()),
    "bearer": lambda t: f"Bearer {t}",
    "bearer, lower case": lambda t: f"bearer {t}",
}


@pytest.mark.parametrize("form", CREDENTIALS)
def test_every_form_of_proxy_credentials_opens_the_tunnel(agent: Agent, vendor: FakeVendor, form: str) -> None:
    sock, answer = raw_connect(agent.gw, "api.stripe.com", CREDENTIALS[form](agent.token))
    assert (answer.status, answer.headers.get("x-egress-error")) == (200, None), answer
    tls = trusting(agent.gw).wrap_socket(sock, server_hostname="api.stripe.com")
    tls.sendall(b"GET /v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
    got = read_response(tls)
    tls.close()
    assert got.status == 200 and vendor.received[-1].headers["authorization"] == f"Bearer {STRIPE_KEY}"


@pytest.mark.parametrize("sub", ["team:agent-1", "agent é/1 @acme 50%"])
@pytest.mark.parametrize("kind", ["urllib", "requests", "httpx-h2", "aiohttp", "curl", "node"])
def test_env_proxy_urls_work_whatever_the_sub(gw: GatewayProcess, monkeypatch: pytest.MonkeyPatch, vendor: FakeVendor, sub: str, kind: str) -> None:
    """The sub became the proxy URL's user name percent-encoded: a `:` in it made every client's
    token the wrong field (407), aiohttp refused it, requests and aiohttp sent non-ASCII as Latin-1."""
    call = _client(kind)
    agent = _agent(gw, monkeypatch, f"{sub}-{uuid.uuid4().hex[:8]}")
    got = call(agent, "GET", BALANCE, {}, None)
    assert got.status == 200, got
    assert [r["decision"] for r in agent.records(2)] == ["allow", "allow"]


@pytest.mark.parametrize("kind", ["urllib", "requests", "httpx-h2", "curl", "node"])
def test_a_hand_written_proxy_url_with_a_percent_encoded_user_name(agent: Agent, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Not what `env` writes, but what a person may: each client decodes the user name (a `:` and
    an `é` in it) and sends it in its own charset; the token after the last `:` is found. (aiohttp
    refuses such a URL itself: `A ":" is not allowed in login`.)"""
    agent.proxy = f"http://team%3Aagent%20%C3%A9:{agent.token}@127.0.0.1:{agent.gw.port}"
    agent.export(monkeypatch)
    assert _client(kind)(agent, "GET", BALANCE, {}, None).status == 200
    assert [r["decision"] for r in agent.records(2)] == ["allow", "allow"]


def _raw(gw: GatewayProcess, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(request)
        return _read_all(sock)


def test_connect_http10_and_a_lower_case_connect(agent: Agent, vendor: FakeVendor) -> None:
    auth = basic(agent.token).encode()
    sock = socket.create_connection(("127.0.0.1", agent.gw.port), timeout=10)
    sock.sendall(b"CONNECT api.stripe.com:443 HTTP/1.0\r\nProxy-Authorization: " + auth + b"\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.0 200")
    tls = trusting(agent.gw).wrap_socket(sock, server_hostname="api.stripe.com")
    tls.sendall(b"GET /v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\n\r\n")
    assert read_response(tls).status == 200
    tls.close()
    lower = _raw(agent.gw, b"connect api.stripe.com:443 HTTP/1.1\r\nHost: api.stripe.com:443\r\nProxy-Authorization: " + auth + b"\r\n\r\n")
    head, _, body = lower.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and json.loads(body)["error"]["code"] == "bad_request"
    assert len(vendor.received) == 1


def test_absolute_form_without_connect_and_a_connect_inside_the_tunnel(agent: Agent, vendor: FakeVendor) -> None:
    auth = basic(agent.token).encode()
    absolute = _raw(agent.gw, b"GET https://api.stripe.com/v1/balance HTTP/1.1\r\nHost: api.stripe.com\r\nProxy-Authorization: " + auth + b"\r\n\r\n")
    head, _, body = absolute.partition(b"\r\n\r\n")
    err = json.loads(body)["error"]
    assert head.startswith(b"HTTP/1.1 403") and err["code"] == "plain_http_denied"
    assert "CONNECT" in err["message"] and "use https" not in err["message"]  # it was https, sent in the clear
    sock, answer = raw_connect(agent.gw, "api.stripe.com", basic(agent.token))
    assert answer.status == 200
    tls = trusting(agent.gw).wrap_socket(sock, server_hostname="api.stripe.com")
    tls.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nProxy-Authorization: " + auth + b"\r\n\r\n")
    second = read_response(tls)
    tls.close()
    assert (second.status, second.error()["code"]) == (400, "bad_request")
    assert not vendor.received
