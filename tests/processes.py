"""The real processes every suite starts: the gateway (`egress-gateway run`) and redis-server.

These are the only launchers in the test tree, the demo and the benchmark. A gateway is started
with the test vendor keys in its environment (`VENDOR_ENV`), so no caller repeats them; a redis-server
can be killed (SIGKILL, as in a crash) and started again on the same port. Neither prints a secret
in its repr, so a failing test's traceback never shows a vendor key.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.fakes import REPO, VENDOR_ENV

PR_SET_PDEATHSIG = 1


def _die_with_the_test_run() -> None:
    """Linux: the child gets SIGTERM when the process that started it dies, so a test run killed
    mid-way (a timeout, ^C) leaves no gateway or redis-server behind to load the machine."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 45.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


def _stop(proc: subprocess.Popen[bytes], sig: int | None = None) -> int:
    """Terminate (or send `sig`), wait, and kill what does not exit within 15 s."""
    if proc.poll() is None:
        if sig is None:
            proc.terminate()
        else:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass(repr=False)
class GatewayProcess:
    """`egress-gateway run` in a subprocess with its own config, state dir and ports.

    `env` is added to the test vendor keys. `start` may be called again after a stop or a kill
    (same ports, same state dir: a restart); as a context manager the process is stopped on exit.
    `checkout` is the source tree whose gateway runs (another commit's, for a benchmark comparing them).
    """

    root: Path
    settings: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    checkout: Path = REPO

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.port, self.api_port = free_port(), free_port()
        self.state_dir = self.root / "state"
        self.config_file = self.root / "gateway.yaml"
        cfg = {"listen": f"127.0.0.1:{self.port}", "api_listen": f"127.0.0.1:{self.api_port}", **self.settings}
        self.config_file.write_text(yaml.safe_dump(cfg))
        self.log_file = self.root / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:  # the environment holds the vendor keys
        return f"GatewayProcess({self.root.name}, port={self.port}, api_port={self.api_port})"

    def _environ(self) -> dict[str, str]:
        return {**os.environ, **VENDOR_ENV, **self.env}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gateway.cli", *args]
        if args and args[0] not in ("--help",):
            cmd += ["--config", str(self.config_file), "--state-dir", str(self.state_dir)]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, cwd=self.checkout, env=self._environ(),
                              timeout=60)

    def start(self) -> GatewayProcess:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config_file), "--state-dir", str(self.state_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.checkout,
                env=self._environ(),
                preexec_fn=_die_with_the_test_run,
            )
        wait_port(self.port, proc=self.proc)
        wait_port(self.api_port, proc=self.proc)
        return self

    def stop(self, sig: int | None = None) -> int:
        return 0 if self.proc is None else _stop(self.proc, sig)

    def __enter__(self) -> GatewayProcess:
        return self if self.proc is not None and self.proc.poll() is None else self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "ca" / "mitmproxy-ca-cert.pem"

    @property
    def audit_file(self) -> Path:
        return self.state_dir / "audit.jsonl"

    def audit(self) -> list[dict[str, Any]]:
        """The audit log's records, less the chain's own signature records."""
        if not self.audit_file.exists():
            return []
        records = (json.loads(line) for line in self.audit_file.read_text().splitlines() if line.strip())
        return [rec for rec in records if rec.get("type") != "signature"]

    def token(self, sub: str = "agent-1", role: str = "finance", scopes: tuple[str, ...] = ("*",), **kw: Any) -> str:
        from gateway.identity import tokens as identity

        key = identity.load_or_create_key(self.state_dir / "signing-key.pem")
        kw.setdefault("ttl", 600)
        kw.setdefault("max_ttl", 1800)
        if role == identity.ADMIN_ROLE:
            kw.setdefault("tenant", identity.ALL_TENANTS)  # the suites' operator is a global admin
        return identity.issue(key, sub=sub, role=role, scopes=scopes, **kw)

    def proxy_url(self, token: str, user: str = "agent") -> str:
        return f"http://{user}:{token}@127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


class RedisServer:
    """A throwaway redis-server on a free loopback port, which tests kill and start again."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed: apt-get install -y redis-server (.ci/run does)")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, running={self.running})"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_the_test_run,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: the store vanishes mid-conversation, as in a crash or an OOM kill."""
        if self.proc is not None:
            _stop(self.proc, signal.SIGKILL)

    def dump(self) -> list[bytes]:
        """Every key and its serialized value, for the leak check (the vault must hold only ciphertext)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        try:
            return [key + b" " + (client.dump(key) or b"") for key in client.scan_iter(count=1000)]
        finally:
            client.close()


def seed_python_guest(cache: Path | None, gw: GatewayProcess) -> None:
    """Put the compiled guest where `gw` looks for it (its state dir's `sandbox-cache`), before it starts."""
    if cache is None:
        return
    target = gw.state_dir / "sandbox-cache"
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    gw.state_dir.chmod(0o700)
    for compiled in cache.glob("*.cwasm"):
        shutil.copy2(compiled, target / compiled.name)
        (target / compiled.name).chmod(0o600)
