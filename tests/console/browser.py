"""Headless Chromium from Debian, driven by Selenium through Debian's chromedriver.

Both paths are given explicitly, so Selenium Manager never runs and nothing is downloaded at test
time. The profile is fresh for each browser (`--user-data-dir` in a temporary directory), and the
flags keep Chromium from calling home (updates, sync, background networking). Screenshots go to
`tests/artifacts/console/` (ignored by git), printed by the tests that write them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
)
ARTIFACTS = REPO / "tests" / "artifacts" / "console"


def start_browser(profile: Path, width: int = 1280, height: int = 900) -> Any:
    """A Chrome WebDriver, or a skip naming what is missing (only when Chromium is not installed)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("Chromium is not installed: apt-get install -y chromium chromium-driver (.ci/run does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


