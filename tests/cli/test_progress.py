"""Progress lines: silent for quick steps, one line before and one after for slow ones."""

from __future__ import annotations

import io
import re
import time

import pytest

from gateway.cli.progress import progress


@pytest.mark.parametrize("after", [0.05, 0.2])
def test_a_slow_step_says_what_it_waits_for_and_how_long_it_took(after: float) -> None:
    out = io.StringIO()
    with progress("loading models", after=after, stream=out):
        time.sleep(after * 4)
    lines = out.getvalue().splitlines()
    assert lines[0] == "egress-gateway: loading models..."
    m = re.fullmatch(r"egress-gateway: loading models: done in (\d+\.\d)s", lines[1])
    assert m and float(m.group(1)) >= after * 4 - 0.05 and len(lines) == 2


def test_a_quick_step_prints_nothing_even_later() -> None:
    out = io.StringIO()
    with progress("creating the CA", after=0.2, stream=out):
        pass
    time.sleep(0.4)  # the cancelled timer must not fire afterwards
    assert out.getvalue() == ""


def test_a_failing_step_says_it_failed() -> None:
    out = io.StringIO()
    with pytest.raises(ValueError), progress("building", after=0.01, stream=out):
        time.sleep(0.1)
        raise ValueError("bad config")
    assert out.getvalue().splitlines()[-1].startswith("egress-gateway: building: failed after")
