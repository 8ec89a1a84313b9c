"""Field paths: the one way connectors, policies and DLP address a decoded body."""

from __future__ import annotations

import pytest

from connectors import fieldpath

BODY = {
    "metadata": {"account": "123", "note": "x"},
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}],
}


def test_select_and_assign() -> None:
    assert [m.value for m in fieldpath.select(BODY, "metadata.account")] == ["123"]
    assert [m.path for m in fieldpath.select(BODY, "metadata.*")] == ["metadata.account", "metadata.note"]
    assert [m.value for m in fieldpath.select(BODY, "messages[*].role")] == ["user", "assistant"]
    assert fieldpath.select(BODY, "messages[1].content[0].text")[0].value == "yo"
    assert fieldpath.select(BODY, "missing.path") == []
    assert fieldpath.select(BODY, "messages[9].role") == []
    data = {"a": [{"b": "1"}]}
    (m,) = fieldpath.select(data, "a[0].b")
    fieldpath.assign(data, m.keys, "2")
    assert data == {"a": [{"b": "2"}]}


@pytest.mark.parametrize("bad", ["", ".a", "a.", "a..b", "a[x]", "a[", "a]"])
def test_bad_paths_are_errors(bad: str) -> None:
    with pytest.raises(fieldpath.PathSyntaxError):
        fieldpath.parse(bad)
