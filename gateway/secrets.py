"""Vendor credentials, looked up by reference (`env:NAME`, `file:PATH`), never written in config.

A file is re-read when it changes, so a rotated key takes effect without a restart. Values are
only ever handed to the credential step; nothing here logs or formats them.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.errors import Refusal


class Secrets:
    def __init__(self, refs: dict[str, str]):
        self._refs = dict(refs)
        self._files: dict[Path, tuple[float, str]] = {}

    def get(self, name: str) -> str:
        """The credential named `name`; refuses (fail closed) when it is not configured or missing."""
        ref = self._refs.get(name)
        if ref is None:
            raise Refusal("store_unavailable", f"no credential is configured for {name!r} (secrets.{name})")
        kind, _, where = ref.partition(":")
        value = os.environ.get(where) if kind == "env" else self._read_file(Path(where).expanduser())
        if not value:
            raise Refusal("store_unavailable", f"the credential for {name!r} is empty or missing ({kind})")
        return value

    def _read_file(self, path: Path) -> str | None:
        try:
            mtime = path.stat().st_mtime
            cached = self._files.get(path)
            if cached is None or cached[0] != mtime:
                cached = (mtime, path.read_text().strip())
                self._files[path] = cached
            return cached[1]
        except OSError:
            return None
