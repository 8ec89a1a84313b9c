"""`make fleet`: a real local fleet, and the demo agent through it.

redis-server; two replicas (`r1`, `r2`) of two workers each, sharing Redis for rate limits and
budgets (`stores.rate_limits`), mutable state (`stores.state`) and the DLP vault (`dlp.vault`, one
vault key); HAProxy (Debian's `haproxy`, TCP mode, round robin) in front of both ports; then the
scripted agent of `make demo` (tests/demo.py) runs through HAProxy's ports. The replicas share one
CA and signing key (copied from r1's state dir before they start: the `keys:` setting replaces
that), so a token or a certificate from one is good on the other.

`--hold` keeps the fleet up after the demo (Ctrl-C stops it) and prints the agent's exports.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from copy import copy
from pathlib import Path

from gateway.identity.tokens import load_or_create_key
from tests import demo
from tests.fakes import PKI, VENDOR_HOSTS, FakeVendor, vendor_settings
from tests.processes import GatewayProcess, RedisServer, free_port, start_all, wait_port

HAPROXY_CFG = """\
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend proxy
    bind 127.0.0.1:{proxy}
    default_backend proxy_replicas
backend proxy_replicas
    balance roundrobin
{proxy_servers}
frontend api
    bind 127.0.0.1:{api}
    default_backend api_replicas
backend api_replicas
    balance roundrobin
    option httpchk GET /readyz
{api_servers}
"""


def haproxy(root: Path, replicas: list[GatewayProcess]) -> tuple[subprocess.Popen[bytes], int, int]:
    binary = shutil.which("haproxy")
    if binary is None:
        raise SystemExit("haproxy is not installed: apt-get install -y haproxy (.ci/run does)")
    proxy, api = free_port(), free_port()
    cfg = root / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(
        proxy=proxy,
        api=api,
        proxy_servers="\n".join(f"    server r{i} 127.0.0.1:{r.port} check" for i, r in enumerate(replicas, 1)),
        api_servers="\n".join(f"    server r{i} 127.0.0.1:{r.api_port} check" for i, r in enumerate(replicas, 1)),
    ))
    proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(proxy, proc=proc)
    wait_port(api, proc=proc)
    return proc, proxy, api


def start_replicas(root: Path, pki: PKI, vendor: FakeVendor, redis: RedisServer) -> list[GatewayProcess]:
    vault_key = base64.b64encode(os.urandom(32)).decode()
    settings = vendor_settings(pki, vendor, workers=2, stores={"rate_limits": redis.url, "state": redis.url},
                               dlp={"vault": redis.url, "key": vault_key})
    replicas = [GatewayProcess(root / f"r{i}", {**settings, "replica": f"r{i}"}) for i in (1, 2)]
    first, *others = replicas
    first.cli("ca", "path")
    load_or_create_key(first.state_dir / "signing-key.pem")
    for other in others:
        other.state_dir.mkdir(mode=0o700, parents=True)
        shutil.copytree(first.state_dir / "ca", other.state_dir / "ca")
        shutil.copy2(first.state_dir / "signing-key.pem", other.state_dir / "signing-key.pem")
    return start_all(*replicas)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", action="store_true", help="keep the fleet up after the demo, until Ctrl-C")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="egress-fleet-") as tmp:
        root = Path(tmp)
        pki = PKI(root / "pki")
        vendor = FakeVendor(pki.leaf("vendor", VENDOR_HOSTS))
        redis = RedisServer(root).start()
        replicas: list[GatewayProcess] = []
        balancer = None
        try:
            replicas = start_replicas(root, pki, vendor, redis)
            balancer, proxy, api = haproxy(root, replicas)
            front = copy(replicas[0])  # r1's keys and CLI, HAProxy's ports
            front.port, front.api_port = proxy, api
            print(f"redis {redis.url}; replicas r1, r2 (2 workers each); HAProxy proxy 127.0.0.1:{proxy}, "
                  f"API 127.0.0.1:{api}")
            code = demo.walk(front, vendor)
            served = Counter((rec["replica"], rec["worker"]) for r in replicas for rec in r.audit()
                             if rec.get("phase") == "decision")
            print("decisions per replica and worker:", dict(sorted(served.items())))
            if args.hold:
                token = front.token(sub="fleet-agent", role="finance", scopes=("stripe:*",), ttl=1800)
                print(f"\nexport HTTPS_PROXY={front.proxy_url(token)}\nexport SSL_CERT_FILE={front.ca_file}\n"
                      "Ctrl-C stops the fleet.")
                while True:
                    time.sleep(3600)
            return code
        except KeyboardInterrupt:
            return 0
        finally:
            if balancer is not None:
                balancer.terminate()
                balancer.wait()
            for r in replicas:
                r.stop()
            redis.kill()
            vendor.close()


if __name__ == "__main__":
    sys.exit(main())
