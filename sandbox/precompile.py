"""Compiling a component in a short-lived child process, so its peak memory is not the gateway's.

Compiling CPython's component takes seconds and peaks at ~500 MiB; done inside the gateway, the
allocator keeps most of that resident for the rest of the process's life. A child compiles with the
same engine settings (`make_component_engine`) and writes the serialized code, owner-only, into the
cache; the gateway then maps that file in milliseconds, as it does after any restart.

    python -m sandbox.precompile SOURCE.wasm OUT.cwasm
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gateway.errors import SandboxError
from sandbox.outcome import error_line


class CompileError(SandboxError):
    """The child could not compile the bytes; the message is the first line of its error."""


def compile_in_child(data: bytes, out: Path, timeout: float = 900.0) -> None:
    """Compile the component `data` in a child process and write its serialized code to `out`."""
    fd, source = tempfile.mkstemp(dir=out.parent, suffix=".wasm")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "sandbox.precompile", source, str(out)],
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise CompileError(f"compiling took longer than {timeout:.0f} s") from None
    finally:
        os.unlink(source)
    if done.returncode != 0 or not out.exists():
        raise CompileError(error_line(done.stderr, default=f"the compiler exited with {done.returncode}"))


def main(argv: list[str]) -> int:
    from wasmtime import WasmtimeError, component

    from sandbox.cache import write_private
    from sandbox.component import make_component_engine

    source, out = argv
    try:
        compiled = component.Component.from_file(make_component_engine(), source)
    except WasmtimeError as e:
        print(error_line(str(e), first=True, default="not a component"), file=sys.stderr)
        return 1
    write_private(Path(out), bytes(compiled.serialize()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
