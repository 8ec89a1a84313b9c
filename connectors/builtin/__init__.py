"""Built-in connectors, registered through the egress_gateway.connectors entry point group."""
