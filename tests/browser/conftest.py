"""A live ``ragtune serve`` on the tiny models and a real headless Chromium (Debian's
``chromium`` and ``chromium-driver``, driven by Selenium; no browser is downloaded)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import ragtune
from tests.chromium import HEADLESS_FLAGS, chromium, profile_flag

KEY_A, KEY_B = "sk-browser-a", "sk-browser-b"
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = chromium() or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Screenshots land here as test artefacts; with RAGTUNE_DOCS_SCREENSHOTS=1 (make screenshots)
# they are also copied into docs/img/.
ARTEFACTS = Path(os.environ.get("RAGTUNE_BROWSER_ARTEFACTS", REPO / "build" / "browser"))
DOCS_IMG = REPO / "docs" / "img"


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        message = (
            f"browser tests need {', '.join(missing)} (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # CI must run them, never skip
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    home: Path

    def api(self, method: str, path: str, key: str = KEY_A, body: dict | None = None) -> dict:
        req = urllib.request.Request(
            f"{self.url}/v1{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return dict(json.load(resp))


@pytest.fixture(scope="session")
def server(
    tiny_lm: Path, tiny_embedder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    _need_browser()
    home = tmp_path_factory.mktemp("browser_home")
    port = _free_port()
    env = {
        **os.environ,
        "RAGTUNE_HOME": str(home),
        "RAGTUNE_API_KEYS": f"{KEY_A},{KEY_B}",
        "RAGTUNE_SERVE_MODEL": str(tiny_lm),
        "RAGTUNE_SERVE_EMBEDDER": str(tiny_embedder),
        "RAGTUNE_SERVE_EMBED_BACKEND": "torch",
        "RAGTUNE_SERVE_DEVICE": "cpu",
        "PYTHONPATH": str(Path(ragtune.__file__).parents[1]),
    }
    log = open(home / "serve.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragtune.cli", "serve", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    srv = Server(f"http://127.0.0.1:{port}", home)
    deadline = time.monotonic() + 120
    while True:
        try:
            srv.api("GET", "/models")
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                raise RuntimeError(
                    "ragtune serve did not start:\n" + (home / "serve.log").read_text()[-3000:]
                ) from None
            time.sleep(0.3)
    yield srv
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        *HEADLESS_FLAGS,
        "--disable-dev-shm-usage",
        profile_flag(tmp_path_factory.mktemp("chromium_profile")),
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def screenshot(driver: object, name: str) -> Path:
    """Save a full-width screenshot as a test artefact (and into docs/img/ when asked)."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    size = driver.get_window_size()  # type: ignore[attr-defined]
    # the whole page: the window grows by what the page is taller than its viewport
    extra = driver.execute_script(  # type: ignore[attr-defined]
        "return document.documentElement.scrollHeight - window.innerHeight"
    )
    driver.set_window_size(size["width"], min(size["height"] + max(extra, 0), 4000))  # type: ignore[attr-defined]
    try:
        driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    finally:
        driver.set_window_size(size["width"], size["height"])  # type: ignore[attr-defined]
    if os.environ.get("RAGTUNE_DOCS_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / path.name)
    return path
