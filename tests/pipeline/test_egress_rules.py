"""Address classification (smokescreen's list) and the target checks inside a tunnel."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from gateway.errors import Refusal
from gateway.pipeline import egress
from gateway.pipeline import steps as pipeline


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "169.254.1.1", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a00:1", "2002:a00:1::", "2001:0:4136:e378:8000:63bf:f5ff:fffe",
        "100.100.100.200",
    ],
)
def test_non_public_addresses_are_classified(addr: str) -> None:
    assert egress.classify(ipaddress.ip_address(addr)) is not None


@pytest.mark.parametrize("addr", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808", "::ffff:8.8.8.8"])
def test_public_addresses_pass(addr: str) -> None:
    assert egress.classify(ipaddress.ip_address(addr)) is None


def test_resolver_refuses_ip_literals_and_private_names_but_honours_routes() -> None:
    r = egress.Resolver({"api.stripe.com": ("127.0.0.1", 9443)})
    assert asyncio.run(r.resolve("api.stripe.com", 443)) == ("127.0.0.1", 9443)
    for host in ("127.0.0.1", "169.254.169.254", "localhost"):
        with pytest.raises(Refusal) as e:
            asyncio.run(r.resolve(host, 443))
        assert e.value.code == "address_denied"
    assert asyncio.run(r.resolve("8.8.8.8", 443)) == ("8.8.8.8", 443)


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"scheme": "http"}, "plain_http_denied"),
        ({"target": ("api.openai.com", 443)}, "domain_fronting"),
        ({"target": ("api.stripe.com", 8443)}, "domain_fronting"),
        ({"host_header": ("API.STRIPE.COM", None)}, None),
        ({"host_header": ("api.stripe.com.", 443)}, None),
        ({"host_header": ("api.openai.com", None)}, "domain_fronting"),
        ({"authority": ("api.openai.com", 443)}, "domain_fronting"),
        ({"sni": "api.openai.com"}, "domain_fronting"),
    ],
)
def test_check_target(kw: dict, code: str | None) -> None:
    args = {"connect": ("api.stripe.com", 443), "scheme": "https", "target": ("api.stripe.com", 443),
            "authority": None, "host_header": ("api.stripe.com", None), "sni": "api.stripe.com", **kw}
    if code is None:
        pipeline.check_target(**args)
    else:
        with pytest.raises(Refusal) as e:
            pipeline.check_target(**args)
        assert e.value.code == code
