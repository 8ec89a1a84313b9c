"""Connectors: the connector model, the registry and the built-in vendors."""
