"""Debian's headless Chromium for tests: where it is and the flags it runs with as root,
offline (no first-run, sync, component or background network traffic)."""

from __future__ import annotations

import shutil
from pathlib import Path

HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def profile_flag(folder: Path) -> str:
    """A fresh profile per run, so no state leaks between runs."""
    return f"--user-data-dir={folder}"
