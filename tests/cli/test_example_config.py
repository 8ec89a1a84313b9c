"""The shipped gateway.example.yaml is the one the README's real start uses, and it really starts."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.cli.env_clients import clean_env
from tests.fakes import REPO
from tests.processes import free_port, wait_port


def _readme_config() -> Path:
    lines = re.findall(r'make run ARGS="--config (\S+)"', (REPO / "README.md").read_text())
    assert lines, "the README has no `make run ARGS=\"--config ...\"` line"
    return REPO / lines[0]


def test_the_readme_points_at_the_shipped_example() -> None:
    assert _readme_config() == REPO / "gateway.example.yaml" and _readme_config().is_file()


def test_policy_check_accepts_it(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(_readme_config()), "--state-dir",
                          str(tmp_path), "policy", "check"], capture_output=True, text=True, cwd=tmp_path,
                         env=clean_env({"PYTHONPATH": str(REPO)}), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"ok: {REPO / 'policies'}"  # relative to the file, not the cwd


KEYS = {"STRIPE_API_KEY": "sk_test_example", "OPENAI_API_KEY": "sk-example", "SERPAPI_API_KEY": "serp-example"}


def test_run_starts_on_it_with_its_policies_and_stops_cleanly(tmp_path: Path) -> None:
    port, api_port = free_port(), free_port()
    log = (tmp_path / "run.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(_readme_config()), "--state-dir", str(tmp_path / "state"),
         "--listen", f"127.0.0.1:{port}", "--api-listen", f"127.0.0.1:{api_port}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        env=clean_env({"PYTHONPATH": str(REPO), **KEYS}),  # /readyz names a connector without its key
    )
    try:
        wait_port(port, timeout=60, proc=proc)
        wait_port(api_port, timeout=60, proc=proc)
        assert httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    log.seek(0)
    text = log.read()
    assert code == 0 and "Traceback" not in text, text
    assert f"proxy on 127.0.0.1:{port}" in text
    verified = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", "--strict", "--state-dir",
                               str(tmp_path / "state")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert verified.returncode == 0 and "closed at shutdown" in verified.stdout, verified
