"""`python -m gateway.cli`: the same as the `egress-gateway` console script.

The cyclic garbage collector is off while the command line and what it needs are imported: see
`gateway.cli.main._start_up_done`, which turns it back on.
"""

import gc
import sys

gc.disable()

from gateway.cli.main import main  # noqa: E402  (after gc.disable, on purpose)

sys.exit(main())
