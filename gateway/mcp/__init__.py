"""MCP (Model Context Protocol) as the gateway reads it, without I/O: JSON-RPC messages, tool
definitions and their pins, the edits to a server's answers (JSON and SSE), and the store of pins
and sessions. The mitmproxy glue is `gateway.proxy.mcp`; every tools/call is decided by the one
pipeline (`gateway.pipeline.decision`)."""
