"""Build registered Python tools into components: `python -m sandbox.build --out DIR TOOL_DIR...`.

A Python tool's directory holds `tool.py` (a `WitWorld` class implementing the `egress-tool` world of
sandbox/wit/tool.wit) and `manifest.in.yaml` (its manifest without `kind`, `module` and `sha256`).
componentize-py (the `tools` extra) turns it into `DIR/<name>/tool.wasm`, a component whose only import
is our http interface (`--stub-wasi`), and the manifest with the component's sha256 is written beside
it, so DIR is a tool directory the registry loads (for instance the state dir's `tools/`, where
`POST /v1/tools` keeps registered tools) and its two files are what `POST /v1/tools` takes.

This is a build step, never run by the gateway: offline, seconds per tool. componentize-py's output
is not reproducible (it snapshots an initialized interpreter, with a random seed baked in: Python's
`random` in a built tool repeats one sequence, never use it for secrets), so the sha256 is taken from
the bytes built here, and a component is not committed next to its source (it is ~18 MB anyway).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from gateway.errors import SandboxError
from sandbox.cache import write_private
from sandbox.manifest import ToolManifest
from sandbox.registry import MANIFEST_FILE

WIT_DIR = Path(__file__).parent / "wit"
WORLD = "egress-tool"
SOURCE = "tool.py"
TEMPLATE = "manifest.in.yaml"
MODULE = "tool.wasm"
BUILD_TIMEOUT_S = 300


class BuildError(SandboxError):
    """A tool that could not be built; the message says which and why."""


def componentize_py() -> str:
    """The componentize-py executable of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "componentize-py"
    found = str(beside) if beside.exists() else shutil.which("componentize-py")
    if found is None:
        raise BuildError("componentize-py is not installed (pip install -e '.[tools]')")
    return found


def build_tool(source_dir: Path, out_dir: Path) -> ToolManifest:
    """Build the tool in `source_dir` into `out_dir/<name>/` and return its manifest."""
    template = source_dir / TEMPLATE
    if not (source_dir / SOURCE).is_file() or not template.is_file():
        raise BuildError(f"{source_dir}: needs {SOURCE} and {TEMPLATE}")
    fields = yaml.safe_load(template.read_text(encoding="utf-8")) or {}
    if not isinstance(fields, dict) or {"kind", "module", "sha256"} & set(fields):
        raise BuildError(f"{template}: a mapping without kind, module or sha256 (the build sets them)")
    with tempfile.TemporaryDirectory(prefix="sandbox-build-") as scratch:
        staged = Path(scratch) / MODULE
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}  # bundle the tool dir alone
        proc = subprocess.run(
            [componentize_py(), "-q", "-d", str(WIT_DIR), "-w", WORLD, "componentize", "--stub-wasi",
             "-p", str(source_dir.resolve()), "-o", str(staged), Path(SOURCE).stem],
            capture_output=True, text=True, env=env, cwd=scratch, timeout=BUILD_TIMEOUT_S,
        )
        if proc.returncode != 0:
            raise BuildError(f"{source_dir}: componentize-py failed: {proc.stderr.strip()[-2000:]}")
        data = staged.read_bytes()
    manifest = ToolManifest.model_validate(
        {**fields, "kind": "component", "module": MODULE, "sha256": hashlib.sha256(data).hexdigest()}
    )
    dest = out_dir / manifest.name
    dest.mkdir(parents=True, exist_ok=True)
    write_private(dest / MODULE, data)
    manifest_yaml = yaml.safe_dump(manifest.model_dump(mode="json", exclude_none=True), sort_keys=False)
    write_private(dest / MANIFEST_FILE, manifest_yaml.encode())
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="tool directory to write <name>/ into")
    parser.add_argument("sources", type=Path, nargs="+", help="Python tool directories (tool.py + manifest.in.yaml)")
    args = parser.parse_args(argv)
    for source in args.sources:
        try:
            manifest = build_tool(source, args.out)
        except BuildError as e:
            print(e, file=sys.stderr)
            return 1
        print(f"{manifest.sha256}  {manifest.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
