"""`hashed_line` writes exactly the canonical line `record_hash` verifies, for any record."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.log import canonical, hashed_line, record_hash

# Keys that sort right around "hash" (and below/above it in every way the sort can go).
KEYS = st.sampled_from(["has", "hash_", "hasha", "hasg", "hasi", "Hash", "h", "hash\u00e9", "a", "z", "seq", "prev", "ts", "\u00e9", ""]) | st.text(max_size=6)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(KEYS.filter(lambda k: k != "hash"), VALUES, max_size=8))
def test_the_line_is_the_canonical_record_with_its_hash(record: dict[str, object]) -> None:
    line, digest = hashed_line(record)
    assert digest == record_hash(record)
    assert line == canonical({**record, "hash": digest})
    assert json.loads(line) == {**record, "hash": digest}
