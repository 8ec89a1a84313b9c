"""`egress-gateway run`: the proxy (embedded mitmproxy) and the API, in one process and event loop.

mitmproxy allows one `Master` per process and wants it created inside the running loop; its
options that belong to addons (`connection_strategy`, `body_size_limit`) exist only after the
addons are added, so they are set with `options.update()` afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator

import uvicorn
from mitmproxy import options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from gateway.api.app import create_app
from gateway.api.wire import MAX_REQUEST_HEAD, ApiProtocol
from gateway.config import Config, parse_hostport
from gateway.errors import ConfigError
from gateway.proxy import ca
from gateway.proxy.admission import Admission
from gateway.proxy.answer_check import AnswerCheck
from gateway.proxy.deadlines import ClientDeadline, UpstreamDeadline
from gateway.proxy.decision import Decide
from gateway.proxy.flows import Tunnels
from gateway.proxy.mcp import McpDoor
from gateway.proxy.mitm_compat import ErrorPages, MitmCompat
from gateway.proxy.mtls import ClientCertificates, mode_spec
from gateway.proxy.outcome import Outcome, unclaimed_pages
from gateway.proxy.pinning import Pinning
from gateway.proxy.streams import StreamCutoff
from gateway.proxy.tunnels import Authenticate
from gateway.proxy.workers import InFlight, accepting_on
from gateway.runtime import Runtime, upstream_bundle
from gateway.supervisor import WorkerSockets
from gateway.telemetry.baseline import keep_in_sync

log = logging.getLogger(__name__)


class _ApiServer(uvicorn.Server):
    """uvicorn, minus its own signal handling: the gateway shuts both servers down together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


# mitmproxy's options that make it a gateway rather than a debugging proxy (the bench's
# "mitmproxy core" baseline runs with these too).
FIXED_OPTIONS: dict[str, object] = {
    "connection_strategy": "lazy",  # no upstream connection before a request is allowed
    "http2": False,
    "http3": False,
    "websocket": False,  # an upgraded connection would escape per-request decisions
    "rawtcp": False,  # non-HTTP bytes in a tunnel must never be relayed
    "ssl_insecure": False,
    "upstream_cert": False,  # our certificate for the vendor comes from SNI; no early dial
}


def mitmproxy_addons() -> list[object]:
    """The few of mitmproxy's addons the gateway runs: its ~40 defaults would each see every hook.
    Not `DisableH2C`: the pipeline never forwards `Upgrade`, and an HTTP/2 preface is refused like any
    request and answered in HTTP/2 (`gateway.proxy.mitm_compat`, point 8), where it killed the flow."""
    return [
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(),
    ]


def proxy_options(rt: Runtime) -> dict[str, object]:
    host, port = parse_hostport(rt.config.listen, "listen")
    tls = rt.config.listen_tls
    return {
        **FIXED_OPTIONS,
        # `listen_tls` is a second regular proxy whose clients speak TLS to it (`gateway.proxy.mtls`).
        "mode": ["regular"] + ([mode_spec(tls)] if tls else []),
        "listen_host": host,
        "listen_port": port,
        "confdir": str(rt.state.ca_dir),
        "ssl_verify_upstream_trusted_ca": str(upstream_bundle(rt.state, rt.config.upstream_ca)),
        # mitmproxy has one limit for both directions; requests are held to max_body by the addon.
        "body_size_limit": str(max(rt.config.max_body, rt.config.max_response_body)),
    }


def check_listen(config: Config) -> None:
    """Both ports free before anything starts: a busy one is a one-line error naming the setting,
    not mitmproxy's hint about its own `--mode` flag."""
    addresses = [(config.listen, "listen"), (config.api_listen, "api_listen")]
    if config.listen_tls is not None:
        addresses.append((config.listen_tls.address, "listen_tls.address"))
    for value, what in addresses:
        host, port = parse_hostport(value, what)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                raise ConfigError(f"{what} {value}: {e.strerror}") from None


def gateway_addons(rt: Runtime) -> list[object]:
    """The gateway's addons, one concern each, in the order mitmproxy must call them: a request is
    decided before its read deadline starts (an MCP endpoint's by the MCP door, any other by `Decide`);
    deadlines stop before the outcome awaits DLP; an answer is decoded (or refused) before the MCP
    door edits it and the outcome scrubs it."""
    tunnels = Tunnels()
    pages = ErrorPages(unclaimed_pages(rt))
    timeouts = rt.config.timeouts
    tls = rt.config.listen_tls
    certificates = ClientCertificates(rt, tls, mode_spec(tls)) if tls else None
    return [
        MitmCompat(pages),
        ClientDeadline(timeouts.client),
        *([certificates] if certificates else []),
        Authenticate(rt, tunnels, pages, certificates),
        Admission(rt, tunnels),
        AnswerCheck(rt),
        McpDoor(rt, tunnels),
        Decide(rt, tunnels),
        Pinning(tunnels),
        UpstreamDeadline(timeouts.connect, timeouts.read, tunnels),
        Outcome(rt, tunnels, pages),
        StreamCutoff(rt, tunnels),
    ]


async def _read_stores_again(rt: Runtime) -> None:
    """Read the revocation and quarantine lists once more before the ports take calls.

    Their first read happened when the runtime was built, and the DLP engine loads after it (about
    2.5 s): a store on Redis refuses every agent (`store_unavailable`) when its last read is older
    than `STALE_SECONDS`, and its watcher's first read comes a poll later, so a gateway's first
    calls were refused. A store that cannot be read is logged; it refuses calls itself until it can."""
    for name, store in (("revocations", rt.revocations), ("quarantines", rt.quarantine)):
        try:
            await asyncio.to_thread(store.refresh)
        except store.store_errors as e:
            log.warning("cannot read %s before serving: %s", name, e)


async def serve(rt: Runtime, worker: WorkerSockets | None = None) -> None:
    """Serve until SIGINT/SIGTERM. As a worker of `run --workers N`, serve the supervisor's sockets,
    say when serving, drain on SIGTERM, and drain as well if the supervisor is gone."""
    ca.ensure(rt.state, rt.keys.ca_pem if rt.keys else None)
    master = Master(options.Options(), event_loop=asyncio.get_running_loop())
    inflight = InFlight()
    master.addons.add(*mitmproxy_addons(), *gateway_addons(rt), *([inflight] if worker else []))
    master.options.update(**proxy_options(rt))
    api_host, api_port = parse_hostport(rt.config.api_listen, "api_listen")
    # h11 always (httptools, if installed, would answer malformed requests in plain text) and no
    # WebSocket upgrade (the API has no WebSocket route; an upgrade was a bodiless 403).
    api = _ApiServer(uvicorn.Config(create_app(rt), host=api_host, port=api_port, log_level="warning", lifespan="off",
                                    http=ApiProtocol, ws="none", h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
                                    timeout_graceful_shutdown=max(1, round(rt.config.drain_timeout))))
    loop = asyncio.get_running_loop()
    accepting: list[asyncio.Server] = []
    tasks: list[asyncio.Task[None]] = []

    def stop() -> None:
        master.shutdown()
        api.should_exit = True

    async def drain() -> None:
        log.info("draining: no new connections; up to %.0fs for the calls in flight", rt.config.drain_timeout)
        for server in accepting:
            server.close()
        api.should_exit = True
        cut = await inflight.settled(time.monotonic() + rt.config.drain_timeout)
        if cut:
            log.warning("drain_timeout reached: %d calls in flight are cut", cut)
        master.shutdown()

    def start_drain() -> None:
        if not tasks:
            tasks.append(asyncio.create_task(drain()))

    if worker is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        listening: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the supervisor sends SIGTERM; SIGINT only if sent on purpose
            loop.add_signal_handler(sig, start_drain)
        listening = accepting_on({parse_hostport(rt.config.listen, "listen")[1]: worker.proxy}, accepting)
    await rt.quotas.warm_up()
    await _read_stores_again(rt)
    watchers = [
        asyncio.create_task(rt.revocations.watch()),
        asyncio.create_task(rt.quarantine.watch(rt.quarantine_changed)),
        asyncio.create_task(rt.decisions.run(rt.live)),
        asyncio.create_task(rt.connectors.watch()),
    ]
    if rt.baselines is not None and rt.baseline_file is not None:
        watchers.append(asyncio.create_task(keep_in_sync(rt.baselines, rt.baseline_file, rt.baseline_requested)))
    if rt.siem is not None:
        rt.siem.start()
    rt.secrets.start()
    if rt.policies is not None:
        rt.policies.start()
    if rt.webhook is not None:
        rt.webhook.start()
    api_task = asyncio.create_task(api.serve(sockets=[worker.api] if worker else None))
    helpers = [] if worker is None else [asyncio.create_task(_report_ready(worker, api, accepting)),
                                         asyncio.create_task(_watch_parent(start_drain))]
    try:
        with listening:
            log.info("proxy on %s, API on %s, state in %s", rt.config.listen, rt.config.api_listen, rt.state.root)
            if rt.config.listen_tls is not None:
                log.info("mTLS proxy on %s", rt.config.listen_tls.address)
            await master.run()
    finally:
        rt.live.close()  # live decision streams end within a second, or they would hold the API server open
        api.should_exit = True
        for task in (*watchers, *helpers):
            task.cancel()
        if rt.policies is not None:
            await rt.policies.stop()
        await asyncio.gather(api_task, return_exceptions=True)
        if rt.webhook is not None:
            await rt.webhook.stop()
        await rt.dlp.close()
        rt.close()


async def _report_ready(worker: WorkerSockets, api: uvicorn.Server, accepting: list[asyncio.Server]) -> None:
    """One byte on the supervisor's pipe once both servers accept: it waits for every worker
    before saying the gateway is up, and a worker that dies before this byte is a start failure."""
    while not (api.started and accepting):
        await asyncio.sleep(0.02)
    os.write(worker.ready, b"r")
    os.close(worker.ready)


async def _watch_parent(drain: Callable[[], None]) -> None:
    """A worker whose supervisor died (SIGKILL) drains and exits rather than serving unsupervised."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1)
    log.warning("the supervisor (pid %d) is gone; draining", parent)
    drain()
