"""`audit.export`: every decision as an OCSF event (`gateway.telemetry.ocsf`), as JSON lines, to a
file, syslog (UDP) or an HTTPS endpoint, off the request path.

Each destination has a bounded queue and a thread of its own. The request path only offers the
audit record to the queue: when it is full the record is dropped, counted
(`egress_siem_events_dropped_total`) and logged (once per burst, not once per record), and the call
goes on: a slow or dead SIEM never holds a call. The thread turns records into events, sends them
in batches, and retries an HTTPS batch with backoff (`RETRIES`) before giving it up as failed
(`egress_siem_export_failures_total`). A SIEM is told what the audit log holds, never more.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from gateway.config import AuditExport, parse_hostport
from gateway.errors import ConfigError
from gateway.telemetry import ocsf

log = logging.getLogger(__name__)

BATCH = 500  # events per write or POST
RETRIES = (0.5, 1.0, 2.0, 4.0)  # an HTTPS batch's backoff before it is given up
SYSLOG_MAX = 8192  # the largest datagram sent; a longer event is dropped (and logged), never cut mid-JSON
_STOP = object()

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
            severity = 4 if b'"disposition_id": 2' in line else 6  # warning for a refusal, else info
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


class Destination:
    """One `audit.export` entry: its queue and its sending thread."""

    def __init__(self, dest: AuditExport, send: Send, product_version: str) -> None:
        self.name = dest.to.split("?")[0]
        self._send, self._version = send, product_version
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=dest.queue)
        self._thread = threading.Thread(target=self._run, name=f"siem-export {self.name}", daemon=True)
        self.dropped = self.failed = self.sent = 0
        self._dropping = False

    def start(self) -> None:
        self._thread.start()

    def offer(self, rec: dict[str, Any]) -> None:
        """Queue a record, or drop it (counted, logged once per burst) when the queue is full."""
        try:
            self._queue.put_nowait(rec)
            self._dropping = False
        except queue.Full:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.error("SIEM export to %s is behind: its queue is full, events are dropped", self.name)

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (within `timeout`), then stop the thread."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            lines = [json.dumps(ocsf.event(r, self._version), separators=(",", ":")).encode() for r in batch if r is not _STOP]
            if lines:
                self._deliver(lines)
            if stop:
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
            for d in self.destinations:
                d.offer(rec)

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
