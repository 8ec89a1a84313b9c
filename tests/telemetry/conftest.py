"""One gateway that reports on itself (traces to a real OTLP/HTTP receiver; OCSF events to a file,
syslog and an HTTPS SIEM), shared by this directory's suites; the anomaly suite starts its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes import PKI, FakeVendor, vendor_settings
from tests.processes import GatewayProcess
from tests.telemetry.receivers import OtlpReceiver, SiemServer, SyslogReceiver

# Spans leave in batches every 100 ms instead of the SDK's 5 s, so tests wait less.
FAST_BATCHES = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def syslog() -> Iterator[SyslogReceiver]:
    receiver = SyslogReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def siem(pki: PKI) -> Iterator[SiemServer]:
    server = SiemServer(pki.leaf("siem", ("localhost",)))
    yield server
    server.close()


@pytest.fixture(scope="session")
def observed(tmp_path_factory: pytest.TempPathFactory, pki: PKI, vendor_server: FakeVendor, otlp: OtlpReceiver,
             syslog: SyslogReceiver, siem: SiemServer) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("observed")
    settings = vendor_settings(
        pki,
        vendor_server,
        telemetry={"otlp_endpoint": otlp.url, "service_name": "egress-under-test", "propagate": True},
        audit={"export": [
            {"kind": "ocsf", "to": f"file:{root / 'siem' / 'ocsf.jsonl'}"},
            {"kind": "ocsf", "to": f"syslog:127.0.0.1:{syslog.port}"},
            {"kind": "ocsf", "to": siem.url},
        ]},
    )
    with GatewayProcess(root, settings, FAST_BATCHES).start() as gw:
        yield gw
