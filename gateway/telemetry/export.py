"""`audit.export`: audit records as OCSF events (`gateway.telemetry.ocsf`), as JSON lines, to a
file, syslog (UDP) or an HTTPS endpoint, off the request path.

Each destination has a bounded queue and a thread of its own. The request path only appends the
audit record (the very dict the audit log wrote, never a copy) to each queue, a `deque` append with
no lock and no wake-up: the thread is never woken per record, it wakes every `FLUSH_SECONDS`, takes
what has queued, turns it into events and sends them in one batch (one file write, one POST). A
record's events are built and serialized once, by the first destination thread that needs them,
and shared by the others (`Entry`). When a queue is full the record is dropped, counted
(`egress_siem_events_dropped_total`) and logged (once until the thread has caught up, not once per
record), and the call goes on: a slow or dead SIEM never holds a call. An HTTPS batch is retried with backoff (`RETRIES`)
before it is given up as failed (`egress_siem_export_failures_total`). A SIEM is told what the
audit log holds, never more.

Why batches on a timer: woken for each record, the thread took ~150 µs of CPU per record on a busy
gateway (waking, taking the GIL from the event loop, building, a file open per record), 320-390 µs
per call of `bench/telemetry_bench.py`'s load; in batches of a fifth of a second it takes ~45 µs per
call, at the price of events reaching the SIEM up to `FLUSH_SECONDS` later.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from gateway.config import AuditExport, parse_hostport
from gateway.errors import ConfigError
from gateway.telemetry import ocsf

log = logging.getLogger(__name__)

BATCH = 500  # records per write or POST
FLUSH_SECONDS = 0.2  # how often a destination's thread sends what has queued
RETRIES = (0.5, 1.0, 2.0, 4.0)  # an HTTPS batch's backoff before it is given up
SYSLOG_MAX = 8192  # the largest datagram sent; a longer event is dropped (and logged), never cut mid-JSON
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_SEVERITY = re.compile(rb'"severity_id":(\d+)')
# OCSF severity_id -> syslog severity: Informational -> info, Low -> notice, Medium -> warning, High+ -> error
_SYSLOG_SEVERITY = {b"1": 6, b"2": 5, b"3": 4}

Send = Callable[[list[bytes]], None]


def _file_sink(path: Path) -> Send:
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)

    def send(lines: list[bytes]) -> None:
        with path.open("ab") as f:
            f.write(b"".join(line + b"\n" for line in lines))

    return send


def _syslog_sink(target: str) -> Send:
    """RFC 5424 over UDP, one event per datagram (facility local0, severity by the event's)."""
    host, port = parse_hostport(target, "audit.export syslog")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    hostname = socket.gethostname()[:64] or "-"

    def send(lines: list[bytes]) -> None:
        for line in lines:
            found = _SEVERITY.search(line)
            severity = _SYSLOG_SEVERITY.get(found.group(1), 3) if found else 6
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            datagram = f"<{16 * 8 + severity}>1 {stamp} {hostname} egress-gateway - ocsf - ".encode() + line
            if len(datagram) <= SYSLOG_MAX:
                sock.sendto(datagram, (host, port))
            else:
                log.warning("an OCSF event over %d bytes was not sent to syslog", SYSLOG_MAX)

    return send


def _https_sink(url: str, ca_bundle: Path | None) -> Send:
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    client = httpx.Client(verify=context, timeout=10, follow_redirects=False)

    def send(lines: list[bytes]) -> None:
        body = b"".join(line + b"\n" for line in lines)
        r = client.post(url, content=body, headers={"content-type": "application/x-ndjson"})
        if r.status_code >= 300:
            raise OSError(f"the SIEM endpoint answered {r.status_code}")

    return send


def sink(dest: AuditExport, ca_bundle: Path | None) -> Send:
    if dest.to.startswith("file:"):
        return _file_sink(Path(dest.to.removeprefix("file:")))
    if dest.to.startswith("syslog:"):
        return _syslog_sink(dest.to.removeprefix("syslog:"))
    return _https_sink(dest.to, ca_bundle)


class Entry:
    """One audit record on its way out, shared by every destination's queue: its events are
    serialized once, by the first thread that sends them (two threads racing both build the same
    lines, and one of them is kept)."""

    __slots__ = ("_lines", "rec")

    def __init__(self, rec: dict[str, Any]) -> None:
        self.rec = rec
        self._lines: list[bytes] | None = None

    def lines(self, product_version: str) -> list[bytes]:
        if self._lines is None:
            self._lines = [encode(e) for e in ocsf.events(self.rec, product_version)]
        return self._lines


def encode(event: dict[str, Any]) -> bytes:
    """One event as a compact JSON line. orjson takes ~1 µs for an OCSF event where json's C
    encoder takes ~20, and with a decision's two events per call that was a third of the SIEM
    export's cost. What orjson refuses (an int beyond 64 bits, a string with a lone surrogate) goes
    through json, which writes them (a lone surrogate as `\\udXXX`); neither is ever dropped."""
    try:
        return orjson.dumps(event)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _ENCODE(event).encode()


class Destination:
    """One `audit.export` entry: its bounded queue and its sending thread."""

    def __init__(self, dest: AuditExport, send: Send, product_version: str) -> None:
        self.name = dest.to.split("?")[0]
        self._send, self._version = send, product_version
        self._queue: deque[Entry] = deque()
        self._limit = dest.queue
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"siem-export {self.name}", daemon=True)
        self.dropped = self.failed = self.sent = 0
        self._dropping = False

    def start(self) -> None:
        self._thread.start()

    def offer(self, entry: Entry) -> None:
        """Queue a record, or drop it when the queue is full: counted, and logged once until the
        thread has caught up (emptied the queue) again."""
        if len(self._queue) >= self._limit:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.error("SIEM export to %s is behind: its queue is full, events are dropped", self.name)
            return
        self._queue.append(entry)

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (within `timeout`), then stop the thread."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            stopping = self._stopping.wait(FLUSH_SECONDS)
            while self._queue:
                batch: list[bytes] = []
                for _ in range(min(BATCH, len(self._queue))):
                    batch += self._queue.popleft().lines(self._version)
                self._deliver(batch)
            self._dropping = False  # caught up: the next full queue is a new burst, logged again
            if stopping:
                return

    def _deliver(self, lines: list[bytes]) -> None:
        for delay in (*RETRIES, None):
            try:
                self._send(lines)
                self.sent += len(lines)
                return
            except (OSError, httpx.HTTPError) as e:
                if delay is None:
                    self.failed += len(lines)
                    log.error("SIEM export to %s failed (%s); %d events lost", self.name, type(e).__name__, len(lines))
                    return
                time.sleep(delay)


class SiemExport:
    """Every `audit.export` destination; `offer` is what the request path calls."""

    def __init__(self, destinations: list[Destination]) -> None:
        self.destinations = destinations

    @classmethod
    def build(cls, exports: tuple[AuditExport, ...], ca_bundle: Path | None, product_version: str) -> SiemExport:
        try:
            return cls([Destination(d, sink(d, ca_bundle), product_version) for d in exports])
        except (OSError, ConfigError) as e:
            raise ConfigError(f"audit.export: {e}") from None

    def offer(self, rec: dict[str, Any]) -> None:
        if ocsf.exported(rec):
            entry = Entry(rec)
            for d in self.destinations:
                d.offer(entry)

    def start(self) -> None:
        for d in self.destinations:
            d.start()

    def stop(self) -> None:
        for d in self.destinations:
            d.stop()

    def dropped(self) -> int:
        return sum(d.dropped for d in self.destinations)

    def failed(self) -> int:
        return sum(d.failed for d in self.destinations)
