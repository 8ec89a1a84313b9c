"""Attestation at start: the sha256 of every artifact the gateway loaded, checked against pins.

What decides a call is code and data loaded at start, and an operator must be able to tell, from
outside, that a gateway runs the artifacts that were reviewed. Each artifact has a name:

    policies              the policy bundle: every policy file's name and bytes (the policy version
                          is the first 16 hex digits of this hash)
    connector:MODULE      the file of a module connectors are loaded from (the built-ins', entry
                          points', and the config's `connectors:` references)
    dlp:PACKAGE/FILE      the DLP name lists (dlp/names.py checks them against sums of its own)
    dlp:model:NAME        the spaCy model directory (`dlp.nlp_model`), over every file's path and bytes
    tool:NAME             a sandbox tool's WASM module (one whose module file is absent is not loaded
                          and not listed)

Each is shown as `sha256:HEX`: logged at start, written to `<state_dir>/attestation.json`, served by
`/readyz` and printed by `egress-gateway status`. `attest.pin` maps names to the hashes they must
have; a pinned artifact that differs, or a pin naming nothing that was loaded (a typo must not pin
nothing), stops start-up with a ConfigError. A pinned policy bundle also refuses hot reloads whose
hash differs (gateway/policy/store.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from dlp.config import DlpConfig
from gateway.errors import ConfigError
from gateway.state import StateDir
from sandbox.registry import ToolRegistry

log = logging.getLogger(__name__)

STATE_FILE = "attestation.json"
CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(root: Path) -> str:
    """A directory's hash: every regular file's relative path and sha256, in path order."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + file_sha256(path).encode() + b"\0")
    return h.hexdigest()


def connector_modules(references: Iterable[str]) -> dict[str, str]:
    """`connector:MODULE` -> the hash of the module's file, for each `module:object` reference."""
    out: dict[str, str] = {}
    for ref in references:
        module = ref.partition(":")[0]
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin and os.path.isfile(spec.origin):
            out[f"connector:{module}"] = file_sha256(Path(spec.origin))
    return out


def dlp_artifacts(config: DlpConfig) -> dict[str, str]:
    """The name lists (already checked against dlp.names.ATTESTED when the engine was built) and the
    spaCy model's directory."""
    from dlp.names import ATTESTED  # with presidio: not for `egress-gateway status`

    out: dict[str, str] = {}
    if config.names:
        out.update({f"dlp:{package}/{file}": digest for (package, file), digest in ATTESTED.items()})
    if config.nlp_model is not None:
        out[f"dlp:model:{config.nlp_model}"] = tree_sha256(_model_dir(config.nlp_model))
    return out


def _model_dir(name: str) -> Path:
    if Path(name).is_dir():
        return Path(name)
    import spacy.util

    return Path(spacy.util.get_package_path(name))


def tool_modules(tools: ToolRegistry) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in tools.names():
        tool = tools.get(name)
        if tool is not None and tool.module_path.is_file():
            out[f"tool:{name}"] = file_sha256(tool.module_path)
    return out


def collect(policy_digest: str | None, references: Iterable[str], dlp: DlpConfig, tools: ToolRegistry) -> dict[str, str]:
    """Artifact name -> `sha256:HEX`, in name order."""
    found = {
        **({"policies": policy_digest} if policy_digest is not None else {}),
        **connector_modules(references),
        **dlp_artifacts(dlp),
        **tool_modules(tools),
    }
    return {name: f"sha256:{found[name]}" for name in sorted(found)}


def check(pins: Mapping[str, str], artifacts: Mapping[str, str]) -> None:
    """ConfigError naming every pinned artifact that differs or was not loaded."""
    problems = []
    for name, pinned in sorted(pins.items()):
        got = artifacts.get(name)
        if got is None:
            problems.append(f"attest.pin.{name}: no such artifact was loaded (loaded: {', '.join(artifacts) or 'none'})")
        elif got != pinned:
            problems.append(f"attest.pin.{name}: the loaded artifact has {got}, pinned {pinned}")
    if problems:
        raise ConfigError("refusing to start, attestation failed:\n" + "\n".join(problems))


def record(state: StateDir, artifacts: Mapping[str, str]) -> None:
    """Log every artifact and write them for `egress-gateway status` on a stopped gateway."""
    for name, digest in artifacts.items():
        log.info("attest: %s %s", name, digest)
    path = state.root / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"started": int(time.time()), "pid": os.getpid(), "artifacts": dict(artifacts)}, indent=1))
    tmp.replace(path)


def read_recorded(state: StateDir) -> dict[str, object] | None:
    """What the last start recorded, or None if no gateway started with this state dir."""
    try:
        data = json.loads((state.root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
