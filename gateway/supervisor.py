"""`egress-gateway run --workers N`: one supervisor, N worker processes, one proxy and one API port.

Accept model: the supervisor binds both ports once and every worker accepts on those two sockets
(inherited descriptors), rather than each worker binding its own with SO_REUSEPORT. Measured here
(bench/fleet_bench.py, README "Workers") the two were within the noise of each other; the shared
socket wins on what matters when a worker dies: with SO_REUSEPORT each worker has its own accept
queue, and Linux resets the connections queued on a killed worker's socket (unless
`net.ipv4.tcp_migrate_req` is set), while with one shared queue the surviving workers accept them.
It also keeps the port held while a worker restarts, and lets `run` fail on a busy port before any
worker loads anything.

Workers: started with the same command line plus `--worker INDEX:PROXY_FD,API_FD,READY_FD`, in a
session of their own (a terminal's Ctrl-C reaches the supervisor only, which then drains them). A
worker writes one byte on its READY pipe once it serves; the gateway is up when all have. A worker
that dies before its first byte at start is a failed start (exit 2: its log says why); one that
dies later is restarted with back-off (0.5 s doubling to 30 s; reset after 30 s of service), and
each death and restart is logged. Each worker builds its own runtime: its own audit chain
(`gateway.audit.log`), its own circuit breakers and metrics; state that must be shared is in the
state directory's SQLite files or, with `stores.*: redis://`, on Redis.

SIGTERM (or SIGINT): the supervisor closes its copies of the sockets and sends SIGTERM to every
worker; each stops accepting, lets its calls in flight finish up to `drain_timeout`
(`gateway.proxy.workers`), and exits. A worker still there `KILL_GRACE` seconds after the deadline
is killed. Exit 0 when every worker exited 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from gateway.config import Config, parse_hostport
from gateway.errors import ConfigError

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER = 0.5, 30.0, 30.0
KILL_GRACE = 10.0
WORKER_FLAG = "--worker"


@dataclass(frozen=True)
class WorkerSockets:
    """What a worker inherits: the proxy and API listening sockets and its readiness pipe."""

    index: int
    proxy: socket.socket
    api: socket.socket
    ready: int

    @classmethod
    def parse(cls, spec: str) -> WorkerSockets:
        """`INDEX:PROXY_FD,API_FD,READY_FD`, as the supervisor passes it."""
        try:
            index, fds = spec.split(":")
            proxy, api, ready = (int(fd) for fd in fds.split(","))
            return cls(int(index), socket.socket(fileno=proxy), socket.socket(fileno=api), ready)
        except (ValueError, OSError) as e:
            raise ConfigError(f"{WORKER_FLAG} {spec!r}: not a worker's inherited sockets ({e})") from None


def bind(value: str, what: str, reuse_port: bool = False) -> socket.socket:
    """A listening socket on `value` (HOST:PORT); a busy port is a one-line error naming the setting."""
    host, port = parse_hostport(value, what)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise ConfigError(f"{what} {value}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int = -1
    ready: bool = False
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """`reuse_port` (the benchmark's comparison only): each worker gets sockets of its own, bound
    with SO_REUSEPORT, and the supervisor holds none."""

    def __init__(self, config: Config, argv: Sequence[str], reuse_port: bool = False) -> None:
        self.config, self.argv, self.reuse_port = config, argv, reuse_port
        self.slots: list[_Slot] = []
        self.stopping = False
        self._sockets: tuple[socket.socket, ...] = ()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        return (bind(self.config.listen, "listen", self.reuse_port),
                bind(self.config.api_listen, "api_listen", self.reuse_port))

    def run(self) -> int:
        self._sockets = self._bind()
        if self.reuse_port:  # checked free; a listening socket nobody accepts on would take its share
            for sock in self._sockets:
                sock.close()
            self._sockets = ()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.slots = [_Slot(i) for i in range(self.config.workers)]
        for slot in self.slots:
            self._spawn(slot)
        try:
            if not self._await_start():
                return self._drain() if self.stopping else 2
            log.info("%d workers serve the proxy on %s and the API on %s", len(self.slots), self.config.listen,
                     self.config.api_listen)
            while not self.stopping:
                self._tend()
                time.sleep(0.1)
            return self._drain()
        finally:
            for sock in self._sockets:
                sock.close()
            for slot in self.slots:
                _kill(slot)

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        self.stopping = True

    def _spawn(self, slot: _Slot) -> None:
        proxy, api = self._bind() if self.reuse_port else self._sockets
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        spec = f"{slot.index}:{proxy.fileno()},{api.fileno()},{write_fd}"
        slot.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *self.argv, WORKER_FLAG, spec],
            pass_fds=(proxy.fileno(), api.fileno(), write_fd),
            start_new_session=True,
        )
        os.close(write_fd)
        if self.reuse_port:
            proxy.close()
            api.close()
        slot.ready_fd, slot.ready, slot.started, slot.restart_at = read_fd, False, time.monotonic(), None

    def _poll_ready(self, slot: _Slot) -> None:
        if slot.ready or slot.ready_fd < 0:
            return
        try:
            said = os.read(slot.ready_fd, 1)
        except BlockingIOError:
            return
        if said:
            slot.ready = True
            log.info("worker %d (pid %d) serves", slot.index, slot.proc.pid if slot.proc else 0)
        os.close(slot.ready_fd)
        slot.ready_fd = -1

    def _await_start(self) -> bool:
        """Until every worker serves; False if one exits first (the others are then killed), or
        if asked to stop meanwhile (they are then drained)."""
        while not all(s.ready for s in self.slots):
            for slot in self.slots:
                self._poll_ready(slot)
                if not slot.ready and slot.proc is not None and slot.proc.poll() is not None:
                    log.error("worker %d exited (%s) before serving; its log is above", slot.index,
                              _how(slot.proc.returncode))
                    return False
            if self.stopping:
                return False
            time.sleep(0.05)
        return True

    def _tend(self) -> None:
        """Restart the workers that died, each after its back-off."""
        now = time.monotonic()
        for slot in self.slots:
            self._poll_ready(slot)
            if slot.restart_at is not None:
                if now >= slot.restart_at:
                    log.info("restarting worker %d", slot.index)
                    self._spawn(slot)
                continue
            if slot.proc is None or slot.proc.poll() is None:
                continue
            slot.failures = 1 if now - slot.started >= STABLE_AFTER else slot.failures + 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (slot.failures - 1))
            log.warning("worker %d (pid %d) died (%s); restarting in %.1fs (%d in a row)", slot.index,
                        slot.proc.pid, _how(slot.proc.returncode), delay, slot.failures)
            if slot.ready_fd >= 0:
                os.close(slot.ready_fd)
                slot.ready_fd = -1
            slot.restart_at = now + delay

    def _drain(self) -> int:
        """Close the port, ask every worker to drain, wait for them (killing those past the deadline)."""
        for sock in self._sockets:
            sock.close()
        running = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        log.info("draining %d workers (up to %.0fs)", len(running), self.config.drain_timeout)
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout + KILL_GRACE
        code = 0
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop after the drain deadline; killing it", proc.pid)
                proc.kill()
                proc.wait()
            code = code or (0 if proc.returncode == 0 else 1)
        return code


def _kill(slot: _Slot) -> None:
    if slot.proc is not None and slot.proc.poll() is None:
        slot.proc.kill()
        slot.proc.wait()


def _how(returncode: int) -> str:
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"exit {returncode}"
