"""The `egress-gateway` command line: `run`, `token`, `policy`, `audit`, `ca`, `connectors`, `sandbox`.

Every command finds its state through the same `--config`/`--state-dir` as `run`, so what a
command reports is what the running gateway holds. Commands print results on stdout and reasons on
stderr, and exit 2 on a usage or config error, 1 on a failed check.
"""

from gateway.cli.main import main

__all__ = ["main"]
