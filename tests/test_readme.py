"""The README's table of refusal codes is the closed set in gateway/errors.py, nothing more or less."""

from __future__ import annotations

import re

from gateway.errors import CODES
from tests.fakes import REPO


def test_readme_refusal_table_matches_the_code() -> None:
    text = (REPO / "README.md").read_text()
    table = text.split("<!-- refusal-codes:start -->")[1].split("<!-- refusal-codes:end -->")[0]
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \| (.+) \|$", table, re.M)
    assert [(c, int(s), m) for c, s, m in rows] == [(c, s, m) for c, (s, m) in CODES.items()]
