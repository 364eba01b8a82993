"""The comparison on real data with the real default models (slow; CI runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_data

pytestmark = pytest.mark.integration


def test_compare_on_a_covidqa_subset(tmp_path: Path, models_home: Path, default_lm: Path) -> None:
    """COVID-QA end to end: documents from the SQuAD file, training data from make-qa,
    freshness on 2 facts; every metric of every arm is filled."""
    covid = shared_data("covidqa", "covidqa.json")
    out = tmp_path / "report"
    env = {"RAGTUNE_HOME": str(models_home), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "ragtune.cli", "compare", "--questions", str(covid),
         "--out", str(out), "--max-questions", "8", "--max-qa-pairs", "16", "--epochs", "2",
         "--freshness", "2", "-k", "2", "--json"],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == 1
    assert set(results["arms"]) == {"base", "rag", "ft", "ft_rag"}
    for arm, m in results["arms"].items():
        assert m["n"] == 8
        for key in ("em", "f1", "f1_ci", "contains", "latency_p50_s", "latency_p95_s",
                    "tokens_per_s", "peak_memory_mb"):  # fmt: skip
            assert m[key] is not None, (arm, key)
        if arm in ("rag", "ft_rag"):
            for key in ("recall_at_k", "citation_correct", "grounded", "prep_s", "artefact_mb"):
                assert m[key] is not None, (arm, key)
        if arm in ("ft", "ft_rag"):
            assert m["tokens_trained"] > 0 and m["prep_s"] > 0
    assert results["arms"]["rag"]["recall_at_k"] > 0
    assert results["diff"]["ft"]["total"] > 0 and results["diff"]["rag"] is None
    assert results["freshness"]["n"] == 2
    assert results["training"]["loss_curve"]
    assert results["verdict"]["knowledge"]
    assert (out / "index.html").stat().st_size > 10_000
