"""The gateway: proxy core, pipeline steps, identity, audit, admin API and CLI."""
