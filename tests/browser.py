"""Headless Chromium for the tests that look at a page (`from browser import CHROMIUM, chromium`).

The tests that use it are marked slow and skip when Chromium is missing: `make test` does not
install a browser (`apt-get install chromium` does)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
SKIP_REASON = "chromium is not installed (apt-get install chromium)"


def chromium(
    profile: Path, *args: str, timeout: float = 120, text: bool = False
) -> subprocess.CompletedProcess:
    """Headless Chromium with its own profile folder and `args` (e.g. "--dump-dom", url)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}"]
    return subprocess.run(
        [CHROMIUM, *flags, *args], capture_output=True, text=text, timeout=timeout, check=True
    )
