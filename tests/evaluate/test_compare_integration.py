"""The comparison on real data with the real default models (slow; CI runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_data

pytestmark = pytest.mark.integration


def test_compare_on_a_covidqa_subset(tmp_path: Path, models_home: Path, default_lm: Path) -> None:
    """COVID-QA end to end: the knowledge base holds every context of the SQuAD file (8
    questions sampled), training data from make-qa with its coverage and cost, freshness
    on 2 facts with retention; every metric of every arm is filled and the arms' prompts
    differ only by the retrieved sources."""
    covid = shared_data("covidqa", "covidqa.json")
    out = tmp_path / "report"
    env = {"RAGTUNE_HOME": str(models_home), "PATH": "/usr/bin:/bin"}
    if "PYTHONPATH" in os.environ:  # the code under test, when it is not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    proc = subprocess.run(
        [sys.executable, "-m", "ragtune.cli", "compare", "--questions", str(covid),
         "--out", str(out), "--max-questions", "8", "--max-qa-pairs", "16", "--epochs", "2",
         "--freshness", "2", "-k", "2", "--json"],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == 2
    n_contexts = sum(len(a["paragraphs"]) for a in json.loads(covid.read_text())["data"])
    assert results["corpus"]["documents"] == n_contexts  # the whole corpus, not 8 articles
    cov = results["coverage"]
    assert cov["generate_s"] > 0 and cov["documents"] == n_contexts
    assert cov["pairs_kept"] + cov["pairs_dropped"] == cov["pairs_generated"]
    assert set(cov["dropped_by_reason"]) >= {"unsupported", "malformed", "duplicate"}
    arms = results["arms"]
    assert arms["base"]["prompt"] == arms["ft"]["prompt"]
    assert arms["rag"]["prompt"] == arms["ft_rag"]["prompt"]
    assert arms["ft"]["data_generation_s"] == cov["generate_s"]
    assert arms["ft"]["prep_s"] >= cov["generate_s"] + arms["ft"]["train_prep_s"] - 1e-6
    assert set(results["arms"]) == {"base", "rag", "ft", "ft_rag"}
    for arm, m in results["arms"].items():
        assert m["n"] == 8
        for key in ("em", "f1", "f1_ci", "contains", "latency_p50_s", "latency_p95_s",
                    "tokens_per_s", "peak_memory_mb"):  # fmt: skip
            assert m[key] is not None, (arm, key)
        if arm in ("rag", "ft_rag"):
            for key in ("recall_at_k", "citation_correct", "grounded", "prep_s", "artefact_mb",
                        "cited_share", "attributed_share"):  # fmt: skip
                assert m[key] is not None, (arm, key)
        if arm in ("ft", "ft_rag"):
            assert m["tokens_trained"] > 0 and m["prep_s"] > 0
    assert results["arms"]["rag"]["recall_at_k"] > 0
    assert results["diff"]["ft"]["total"] > 0 and results["diff"]["rag"] is None
    assert results["freshness"]["n"] == 2
    assert set(results["freshness"]["retention"] or {"ft": 0, "ft_rag": 0}) == {"ft", "ft_rag"}
    assert results["training"]["loss_curve"]
    assert results["verdict"]["knowledge"]
    assert (out / "index.html").stat().st_size > 10_000
