"""Configuration parsing: durations, sizes, references, and unknown keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config
from gateway.config import ConfigError


def test_embedded_defaults() -> None:
    cfg = config.load(None)
    assert cfg.listen == "127.0.0.1:8080" and cfg.api_listen == "127.0.0.1:8081"
    assert cfg.max_token_ttl == 1800 and cfg.max_body == 2**20
    assert (cfg.timeouts.connect, cfg.timeouts.read) == (5, 60)


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("5s", 5), ("15m", 900), ("1h", 3600), (30, 30)])
def test_durations(text: object, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("1MiB", 2**20), ("64KiB", 65536), ("1MB", 10**6), (512, 512)])
def test_sizes(text: object, size: int) -> None:
    assert config.parse_size(text) == size


def test_file_and_overrides(tmp_path) -> None:
    f = tmp_path / "gateway.yaml"
    f.write_text("max_token_ttl: 10m\nupstream_ca: ca.pem\nupstreams: {API.Stripe.com: 'https://127.0.0.1:9443'}\n")
    cfg = config.load(f, {"listen": "127.0.0.1:9000", "api_listen": None})
    assert cfg.listen == "127.0.0.1:9000" and cfg.max_token_ttl == 600
    assert cfg.upstream_ca == tmp_path / "ca.pem"
    assert cfg.upstream_address("api.stripe.com") == ("127.0.0.1", 9443)


@pytest.mark.parametrize(
    "text",
    ["upstreams: {a.com: 'http://x'}", "secrets: {s: plainvalue}", "timeouts: {read: -1s}", "nope: 1", "- a list", "max_body: 0"],
)
def test_bad_config_is_a_config_error(tmp_path, text: str) -> None:
    f = tmp_path / "gateway.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError):
        config.load(f)


@pytest.mark.parametrize(
    ("text", "says"),
    [("secrets: {a: env:A}\nsecrets: {b: env:B}\n", ":2: not valid YAML: duplicate key 'secrets'"),
     ("telemetry:\n  service_name: a\n  service_name: b\n", ":3: not valid YAML: duplicate key 'service_name'")],
)
def test_a_duplicate_key_is_a_config_error_naming_it_and_its_line(tmp_path: Path, text: str, says: str) -> None:
    """Was read as its last value: a second `secrets:` block silently replaced the first."""
    f = tmp_path / "gateway.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(f)
    assert str(e.value) == f"{f}{says}"


@pytest.mark.parametrize(
    ("uri", "problem"),
    [("sqlite:///tmp/elsewhere.db", "no path"), ("memcached://x", "expected redis://HOST:PORT/DB")],
)
def test_a_state_store_uri_that_would_be_ignored_is_refused(uri: str, problem: str) -> None:
    from gateway.stores import backend

    with pytest.raises(ConfigError, match=problem):
        backend(config.Config.model_validate({"stores": {"state": uri}}))


PASSWORD = "hunter2-s3cret"
URL_KEYS = {
    "telemetry.otlp_endpoint": lambda url: {"telemetry": {"otlp_endpoint": url}},
    "approvals_webhook": lambda url: {"approvals_webhook": url},
    "audit.export.to": lambda url: {"audit": {"export": [{"to": url}]}},
    "identity.issuers.jwks": lambda url: {"identity": {"issuers": [
        {"kind": "oidc", "name": "idp", "audience": "gw", "issuer": "https://idp.example", "jwks": url, "algorithms": ["RS256"],
         "map": {"sub": "sub", "role": "role"}}]}},
    "mcp_servers.url": lambda url: {"mcp_servers": {"docs": {"url": url.replace(":8443", "")}}},
    "upstreams": lambda url: {"upstreams": {"api.stripe.com": url}},
}


@pytest.mark.parametrize("key", URL_KEYS)
@pytest.mark.parametrize(
    ("url", "problem"),
    [(f"https://user:{PASSWORD}@collector.example/v1/x", "user or password"),
     (f"https://{PASSWORD}@collector.example/v1/x", "user or password"),
     (f"https://u:{PASSWORD}@[::1/v1/x", "does not parse"),
     (f"https://collector.example:{PASSWORD}/v1/x", "does not parse"),
     (f"https://collector.example/v1/{PASSWORD} x", "space")],
    ids=["userinfo", "user-only", "open-bracket", "bad-port", "space"],
)
def test_a_url_setting_refuses_userinfo_and_what_does_not_parse_never_echoing_it(
        key: str, url: str, problem: str) -> None:
    """Was accepted: a password in a URL is printed wherever the URL is (start-up logs, errors),
    and a URL that does not parse failed later, far from its key."""
    with pytest.raises(ConfigError) as e:
        config.load(None, URL_KEYS[key](url))
    assert problem in str(e.value) and PASSWORD not in str(e.value), str(e.value)


@pytest.mark.parametrize("key", URL_KEYS)
def test_a_plain_url_setting_loads(key: str) -> None:
    config.load(None, URL_KEYS[key]("https://collector.example:8443/v1/x" if key != "upstreams" else "https://127.0.0.1:9443"))


def test_a_password_in_the_otlp_endpoint_points_to_the_headers_variable() -> None:
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_HEADERS"):
        config.load(None, {"telemetry": {"otlp_endpoint": f"http://u:{PASSWORD}@127.0.0.1:4318"}})


@pytest.mark.parametrize(
    "entry",
    ["*.stripe.com", "*", "api.stripe.com:443", "https://files.example", f"https://u:{PASSWORD}@files.example",
     "files.example/v1", "[::1]", "bücher.example", "files..example", "-files.example", "", ".", "files example"],
)
def test_an_egress_allow_entry_that_could_never_match_is_a_config_error(entry: str) -> None:
    """Was loaded silently: an entry is compared whole with the CONNECT host, so `*.stripe.com`
    (meant as a wildcard), a port, a scheme or a Unicode name let nothing out, and the operator
    learnt it from agents' host_denied. The message names the index, never the value."""
    with pytest.raises(ConfigError) as e:
        config.load(None, {"egress": {"allow": ["files.example", entry]}})
    assert "egress.allow[1]: expected a host name or IP address" in str(e.value)
    assert PASSWORD not in str(e.value)


@pytest.mark.parametrize("entry", ["files.example", "FILES.Example.", "localhost", "xn--bcher-kva.example", "169.254.169.254", "::1", "fe80::1%lo"])
def test_an_egress_allow_host_name_or_address_loads(entry: str) -> None:
    assert config.load(None, {"egress": {"allow": [entry]}}).egress.allow == (entry,)


def test_the_gateway_does_not_start_on_a_wildcard_egress_allow_entry(tmp_path: Path) -> None:
    from tests.processes import GatewayProcess

    gw = GatewayProcess(tmp_path / "gw", {"egress": {"allow": ["*.example.com"]}})
    out = gw.cli("connectors", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "egress.allow[0]: expected a host name or IP address such as files.example" in out.stderr
