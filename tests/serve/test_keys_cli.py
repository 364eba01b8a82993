"""Keys stored hashed; the server refuses non-loopback hosts without keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragtune.cli import main
from ragtune.jobs.keys import create_key, env_project, load_keys


def test_keys_file_stores_hashes_only(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    key = create_key(keys_file, "research")
    assert key not in keys_file.read_text()
    ring = load_keys("sk-env", keys_file)
    assert ring.project(key) == "research"
    assert ring.project("sk-env") == env_project("sk-env") != "research"
    assert ring.project("sk-other") is None


def test_serve_refuses_public_host_without_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RAGTUNE_API_KEYS", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "Refusing to listen on 0.0.0.0 without API keys" in err


def test_keys_create_prints_a_key(capsys: pytest.CaptureFixture[str], ragtune_home: Path) -> None:
    assert main(["keys", "create", "--project", "p1"]) == 0
    key = capsys.readouterr().out.strip()
    ring = load_keys(None, ragtune_home / "serve" / "keys.json")
    assert key.startswith("sk-rt-") and ring.project(key) == "p1"
