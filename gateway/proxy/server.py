"""`egress-gateway run`: the proxy (embedded mitmproxy) and the API, in one process and event loop.

mitmproxy allows one `Master` per process and wants it created inside the running loop; its
options that belong to addons (`connection_strategy`, `body_size_limit`) exist only after the
addons are added, so they are set with `options.update()` afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import uvicorn
from mitmproxy import options
from mitmproxy.addons import core, disable_h2c, errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from gateway.api.app import create_app
from gateway.config import Config, parse_hostport
from gateway.errors import ConfigError
from gateway.proxy import ca
from gateway.proxy.admission import Admission
from gateway.proxy.deadlines import ClientDeadline, UpstreamDeadline
from gateway.proxy.decision import Decide
from gateway.proxy.flows import Tunnels
from gateway.proxy.mitm_compat import ErrorPages, MitmCompat
from gateway.proxy.outcome import Outcome, unclaimed_pages
from gateway.proxy.pinning import Pinning
from gateway.proxy.streams import StreamCutoff
from gateway.proxy.tunnels import Authenticate
from gateway.runtime import Runtime, upstream_bundle

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
    """The few of mitmproxy's addons the gateway runs: its ~40 defaults would each see every hook."""
    return [
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        disable_h2c.DisableH2C(),
        errorcheck.ErrorCheck(),
    ]


def proxy_options(rt: Runtime) -> dict[str, object]:
    host, port = parse_hostport(rt.config.listen, "listen")
    return {
        **FIXED_OPTIONS,
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
    for value, what in ((config.listen, "listen"), (config.api_listen, "api_listen")):
        host, port = parse_hostport(value, what)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                raise ConfigError(f"{what} {value}: {e.strerror}") from None


def gateway_addons(rt: Runtime) -> list[object]:
    """The gateway's addons, one concern each, in the order mitmproxy must call them: a request is
    decided before its read deadline starts; deadlines stop before the outcome awaits DLP."""
    tunnels = Tunnels()
    pages = ErrorPages(unclaimed_pages(rt))
    timeouts = rt.config.timeouts
    return [
        MitmCompat(pages),
        ClientDeadline(timeouts.client),
        Authenticate(rt, tunnels, pages),
        Admission(rt, tunnels),
        Decide(rt, tunnels),
        Pinning(tunnels),
        UpstreamDeadline(timeouts.connect, timeouts.read, tunnels),
        Outcome(rt, tunnels, pages),
        StreamCutoff(rt, tunnels),
    ]


async def serve(rt: Runtime) -> None:
    ca.ensure(rt.state)
    master = Master(options.Options(), event_loop=asyncio.get_running_loop())
    master.addons.add(*mitmproxy_addons(), *gateway_addons(rt))
    master.options.update(**proxy_options(rt))
    api_host, api_port = parse_hostport(rt.config.api_listen, "api_listen")
    api = _ApiServer(uvicorn.Config(create_app(rt), host=api_host, port=api_port, log_level="warning", lifespan="off"))

    loop = asyncio.get_running_loop()

    def stop() -> None:
        master.shutdown()
        api.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    await rt.quotas.warm_up()
    watcher = asyncio.create_task(rt.revocations.watch())
    if rt.policies is not None:
        rt.policies.start()
    if rt.webhook is not None:
        rt.webhook.start()
    api_task = asyncio.create_task(api.serve())
    try:
        log.info("proxy on %s, API on %s, state in %s", rt.config.listen, rt.config.api_listen, rt.state.root)
        await master.run()
    finally:
        rt.live.close()  # live decision streams end within a second, or they would hold the API server open
        api.should_exit = True
        watcher.cancel()
        if rt.policies is not None:
            await rt.policies.stop()
        await asyncio.gather(api_task, return_exceptions=True)
        if rt.webhook is not None:
            await rt.webhook.stop()
        await rt.dlp.close()
        rt.close()
