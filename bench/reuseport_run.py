"""`run --workers N` with each worker on a socket of its own (SO_REUSEPORT), for the benchmark's
comparison with the shared accept socket that `egress-gateway run` uses (`gateway.supervisor`).

    python -m bench.reuseport_run run --config FILE --state-dir DIR
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gateway import config, supervisor
from gateway.identity.tokens import load_or_create_key
from gateway.proxy import ca
from gateway.state import StateDir


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reuseport_run")
    p.add_argument("command", choices=["run"])
    p.add_argument("--config", required=True)
    p.add_argument("--state-dir", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config.load(Path(args.config), {"state_dir": args.state_dir})
    state = StateDir.open(cfg.state_path)
    load_or_create_key(state.signing_key)
    ca.ensure(state)
    return supervisor.Supervisor(cfg, argv, reuse_port=True).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
