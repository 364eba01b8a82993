from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.cli import main
from ragtune.errors import RagtuneError
from ragtune.tune.diff import weight_diff
from ragtune.tune.loop import train


def test_a_model_against_itself_changes_nothing(tiny_lm: Path) -> None:
    diff = weight_diff(tiny_lm, base=tiny_lm)
    assert diff.total_relative == 0.0 and diff.total_delta_norm == 0.0
    assert diff.changed == [] and all(m.relative == 0.0 for m in diff.modules)
    assert diff.to_dict()["total"]["params"] > 0


def test_lora_run_changes_exactly_the_adapted_modules(
    tiny_lm: Path, facts_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(facts_file, tmp_path / "run", base=str(tiny_lm), method="lora", epochs=1, batch_size=2)
    diff = weight_diff(tmp_path / "run")  # the base comes from the run's manifest
    changed = {m.module.rsplit(".", 1)[-1] for m in diff.changed}
    assert changed == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(diff.changed) == 2 * 7  # every projection of both layers
    assert all(m.relative > 0 for m in diff.changed)
    untouched = [m for m in diff.modules if m not in diff.changed]
    assert any("embed_tokens" in m.module for m in untouched)  # LoRA leaves embeddings alone
    assert 0 < diff.total_relative < max(m.relative for m in diff.changed)
    assert [m.relative for m in diff.modules] == sorted(
        (m.relative for m in diff.modules), reverse=True
    )

    assert main(["diff", str(tmp_path / "run"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["changed_modules"] == 14 and report["total"]["relative_change"] > 0
    assert main(["diff", str(tmp_path / "run")]) == 0
    assert "q_proj" in capsys.readouterr().out


def test_full_run_changes_the_embedding(tiny_lm: Path, facts_file: Path, tmp_path: Path) -> None:
    train(facts_file, tmp_path / "run", base=str(tiny_lm), method="full", epochs=1, batch_size=2)
    diff = weight_diff(tmp_path / "run")
    assert any("embed_tokens" in m.module for m in diff.changed)
    with pytest.raises(RagtuneError):
        weight_diff(tiny_lm)  # a plain model folder has no recorded base
