"""A vendor that costs next to no CPU: HAProxy (Debian's `haproxy`) answering every request itself.

The fleet benchmark measures how the gateway's throughput grows with its workers. On a 2-core
machine the vendor shares the cores with them, and the Python fake vendor (`tests.fakes.FakeVendor`)
spends more CPU per request than the gateway does (4.4 ms against 3.7 ms, read from /proc): a second
worker then mostly waits for the vendor, and the ratio says more about the fake than the gateway.
HAProxy's TLS frontend answers a fixed JSON 200 in about 0.1 ms of CPU. It reads the whole request
first (`http-buffer-request`): answering before the body would make it close the connection, and
the benchmark's connections are keep-alive.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.processes import free_port, wait_port

ANSWER = '{"id":"pi_1","object":"payment_intent","amount":2000,"currency":"usd","status":"succeeded"}'


def available() -> bool:
    return shutil.which("haproxy") is not None


class StaticVendor:
    """HAProxy on 127.0.0.1 with the vendor's certificate (`cert`: the certificate and key files)."""

    def __init__(self, root: Path, cert: tuple[Path, Path]):
        self.port = free_port()
        pem = root / "static-vendor.pem"
        pem.write_text(Path(cert[0]).read_text() + Path(cert[1]).read_text())
        cfg = root / "static-vendor.cfg"
        cfg.write_text(
            "global\n    maxconn 4096\n    nbthread 1\n"
            "defaults\n    mode http\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n"
            f"frontend vendor\n    bind 127.0.0.1:{self.port} ssl crt {pem}\n    option http-buffer-request\n"
            f"    http-request return status 200 content-type application/json string '{ANSWER}'\n"
        )
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Nothing is kept per request (FakeVendor's counterpart clears what it recorded)."""

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
