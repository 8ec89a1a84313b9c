"""Pins for what the gateway must still read from mitmproxy as text or reach into as internals.

mitmproxy reports a flow's failure only as a message; the gateway reads three of them
(`gateway.proxy.mitm_compat.CLIENT_GONE`, `BODY_OVER_LIMIT`, `TRAILERS_ERROR`) and knows everything else from its own
state or hooks. Each pin below fails on a mitmproxy upgrade that rewords or moves what is read, so
the change is seen in CI instead of as a misclassified refusal in production.
"""

from __future__ import annotations

import inspect
import re

from mitmproxy.master import Master
from mitmproxy.proxy import layer, server
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers import tls
from mitmproxy.proxy.layers.http import _http1

from gateway.proxy.mitm_compat import (
    BODY_OVER_LIMIT,
    CLIENT_GONE,
    CLIENT_TLS_FAILED,
    MITM_SERVER_LOGGER,
    TRAILERS_ERROR,
    TRAILERS_UNREAD,
)


def test_client_gone_is_the_message_of_an_agent_hanging_up() -> None:
    assert f'"{CLIENT_GONE}.' in inspect.getsource(_http1)


def test_body_over_limit_is_the_message_for_both_directions_with_its_prefix() -> None:
    source = inspect.getsource(http_layers)
    assert "{'Request' if request else 'Response'} " + BODY_OVER_LIMIT in source


def test_the_trailers_error_is_the_body_readers_protocol_error_message() -> None:
    """`Outcome` matches the whole message (a vendor's quoted bytes could spell the reason alone)."""
    prefix = TRAILERS_ERROR.removesuffix(TRAILERS_UNREAD)
    assert prefix != TRAILERS_ERROR and f'f"{prefix}{{e}}"' in inspect.getsource(_http1.Http1Connection.read_body)


def test_error_pages_are_made_by_make_error_response_inside_the_http1_servers_event_handler() -> None:
    assert list(inspect.signature(_http1.make_error_response).parameters) == ["status_code", "message"]
    server_source = inspect.getsource(_http1.Http1Server)
    # mitmproxy 11 passes the event's code; 12 maps its ErrorCode to an HTTP status first.
    assert re.search(r"make_error_response\((event\.code|status), event\.message\)", server_source)
    assert "make_error_response(400, str(e))" in server_source
    handler = inspect.getsource(_http1.Http1Connection._handle_event)
    assert "self.send(event)" in handler and "self.state(event)" in handler
    assert issubclass(_http1.Http1Server, layer.Layer)


def test_upstream_tls_failures_have_their_own_hook() -> None:
    assert tls.TlsFailedServerHook.name == "tls_failed_server"


def test_eager_tasks_are_set_before_the_running_hook_that_undoes_them() -> None:
    """`MitmCompat.running` gives the loop back lazy tasks (mitm_compat point 5); that only holds
    while `Master.run` sets its eager task factory before it triggers `running`, on 11 and 12."""
    run = inspect.getsource(Master.run)
    assert "asyncio_utils.set_eager_task_factory()" in run and "await self.running()" in run
    assert run.index("set_eager_task_factory()") < run.index("await self.running()")


def test_the_client_handshake_failure_is_one_line_of_the_connection_handlers_logger() -> None:
    """Point 6 edits that line on that logger, and bounds the buffer this method fills."""
    layer_source = inspect.getsource(tls.ClientTLSLayer)
    assert f'f"{CLIENT_TLS_FAILED} {{err}}"' in layer_source and "Cannot parse ClientHello: {self.recv_buffer.hex()}" in layer_source
    receive = inspect.getsource(tls.ClientTLSLayer.receive_handshake_data)
    assert "if self.client_hello_parsed:" in receive and "self.recv_buffer.extend(data)" in receive
    assert server.logger.name == MITM_SERVER_LOGGER and "logger.log(" in inspect.getsource(server.ConnectionHandler.log)
