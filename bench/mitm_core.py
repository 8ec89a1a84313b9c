"""The "mitmproxy core" baseline: the gateway's own mitmproxy set-up with `Route` in place of its addon.

`mitmdump` loads some forty default addons (dumper, save, block, ...), and every hook of every
request is dispatched to each of them; the gateway embeds mitmproxy with six. Measured here, that
difference costs about as much as the gateway's addon does, so against mitmdump alone the addon's
cost would be hidden. This process runs the gateway's own mitmproxy addons and fixed options
(`gateway.proxy.server.mitmproxy_addons`, `FIXED_OPTIONS`), which the mitmdump baseline gets too.

    python -m bench.mitm_core --port P --upstream HOST:PORT --confdir DIR --upstream-ca FILE
"""

from __future__ import annotations

import argparse
import asyncio

from mitmproxy import options
from mitmproxy.master import Master

from bench.mitm_route import Route
from gateway.proxy.server import FIXED_OPTIONS, mitmproxy_addons

OPTIONS: dict[str, object] = {**FIXED_OPTIONS, "body_size_limit": str(2**20)}


async def serve(port: int, upstream: str, confdir: str, upstream_ca: str) -> None:
    master = Master(options.Options(), event_loop=asyncio.get_running_loop())
    master.addons.add(*mitmproxy_addons(), Route())
    master.options.update(
        listen_host="127.0.0.1",
        listen_port=port,
        confdir=confdir,
        ssl_verify_upstream_trusted_ca=upstream_ca,
        bench_upstream=upstream,
        **OPTIONS,
    )
    await master.run()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="HOST:PORT of the fake vendor")
    p.add_argument("--confdir", required=True, help="where mitmproxy keeps its CA")
    p.add_argument("--upstream-ca", required=True, help="CA bundle that verifies the vendor")
    a = p.parse_args()
    asyncio.run(serve(a.port, a.upstream, a.confdir, a.upstream_ca))
