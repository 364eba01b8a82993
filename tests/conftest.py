"""Shared fixtures: tiny in-process models, an isolated RAGTUNE_HOME, paths to shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import build_tiny_embedder, build_tiny_lm

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_embedder(tmp_path_factory.mktemp("tiny_embedder"))


@pytest.fixture(autouse=True)
def ragtune_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty data directory."""
    home = tmp_path / "ragtune_home"
    monkeypatch.setenv("RAGTUNE_HOME", str(home))
    return home


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; the calling test is skipped when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


@pytest.fixture(scope="session")
def models_home() -> Path:
    """A data directory shared by integration tests and kept between runs, so the default
    model is converted from its GGUF once, not once per test."""
    import os

    return Path(os.environ.get("RAGTUNE_TEST_HOME", Path.home() / ".cache" / "ragtune-tests"))


@pytest.fixture(scope="session")
def default_lm(models_home: Path) -> Path:
    """The converted default LM folder (Gemma 3 270M), converting it on first use."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RAGTUNE_HOME", str(models_home))
    try:
        from ragtune.models import default_lm_path

        return default_lm_path()
    finally:
        mp.undo()
