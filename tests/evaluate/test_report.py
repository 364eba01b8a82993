"""The report builder on canned results, and a headless-Chromium render check."""

from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from ragtune.evaluate.report import write_report, write_verdict
from tests.chromium import HEADLESS_FLAGS, chromium, profile_flag


def canned() -> dict[str, Any]:
    def arm(f1: float, fmt: float, prep: float, rag: bool) -> dict[str, Any]:
        m = {
            "n": 4,
            "em": f1 - 0.1,
            "em_ci": [0, 1],
            "f1": f1,
            "f1_ci": [f1 - 0.1, f1 + 0.1],
            "contains": f1,
            "contains_ci": [0, 1],
            "format_ok": fmt,
            "format_ok_ci": [0, 1],
            "prep_s": prep,
            "latency_p50_s": 1.5,
            "latency_p95_s": 2.5,
            "tokens_per_s": 40.0,
            "peak_memory_mb": 1500.0,
            "artefact_mb": 3.0,
            "tokens_trained": 0,
        }
        if rag:
            m.update(
                recall_at_k=0.9,
                citation_correct=0.8,
                grounded=0.95,
                citations_model_precision=0.5,
                cited_share=0.25,
                attributed_share=0.75,
            )
        if prep >= 200:  # the fine-tuned arms: make-qa wrote their data in 60 s
            m.update(data_generation_s=60.0, train_prep_s=140.0)
        return m

    citation = {
        "marker": 1,
        "chunk_id": "docs/a.md#0",
        "doc_id": "docs/a.md",
        "source": "/x/docs/a.md",
        "start": 0,
        "end": 20,
        "text": "Zorbland <b>1887</b>",
        "how": "model",
    }
    return {
        "schema": 2,
        "corpus": {"documents": 98, "chunks": 1478},
        "coverage": {
            "documents": 98,
            "documents_covered": 7,
            "passages": 32,
            "passages_covered": 9,
            "pairs_generated": 40,
            "pairs_kept": 12,
            "pairs_dropped": 28,
            "dropped_by_reason": {"unsupported": 20, "malformed": 8, "duplicate": 0},
            "examples": 30,
            "examples_dropped_test_question": 1,
            "generate_s": 60.0,
        },
        "ragtune_version": "0.1.0",
        "created_at": "2026-11-23 12:00:00",
        "settings": {"k": 3},
        "data": {"name": "questions.jsonl", "n_test": 4},
        "arms": {
            "base": arm(0.10, 0.0, 0.0, False),
            "rag": arm(0.60, 0.25, 4.0, True),
            "ft": arm(0.30, 1.0, 200.0, False),
            "ft_rag": arm(0.55, 0.75, 204.0, True),
        },
        "significance": [
            {
                "a": "rag",
                "b": "base",
                "metric": "f1",
                "test": "paired bootstrap",
                "diff": 0.5,
                "p": 0.001,
            },
            {
                "a": "rag",
                "b": "ft_rag",
                "metric": "f1",
                "test": "paired bootstrap",
                "diff": 0.05,
                "p": 0.4,
            },
            {
                "a": "ft",
                "b": "rag",
                "metric": "format_ok",
                "test": "McNemar (exact)",
                "diff": 0.75,
                "p": 0.03,
            },
        ],
        "training": {"loss_curve": [[1, 3.0], [2, 2.0], [3, 1.2]], "valid_curve": [[3, 1.5]]},
        "freshness": {
            "n": 2,
            "changes": [{"qid": "q1", "doc_id": "docs/a.md", "old": "1887", "new": "1903"}],
            "arms": {
                "rag": {
                    "n": 2,
                    "reflected": 2,
                    "kept_old": 0,
                    "reingest_s": 1.25,
                    "seconds_to_reflect": 1.25,
                    "how": "re-ingest",
                },
                "ft": {
                    "n": 2,
                    "reflected": 0,
                    "kept_old": 2,
                    "seconds_to_reflect": 150.0,
                    "how": "retraining",
                    "reflected_after_retrain": 1,
                    "retrain_s": 150.0,
                },
            },
        },
        "diff": {
            "base": None,
            "rag": None,
            "ft": {"total": 0.0123, "top": [["layers.0.q", 0.02]]},
            "ft_rag": {"total": 0.0123, "top": []},
        },
        "questions": [
            {
                "qid": "q1",
                "question": "When was <Zorbland> founded?",
                "answers": ["1887"],
                "doc_ids": ["docs/a.md"],
                "arms": {
                    "base": {"answer": "1900", "contains": 0.0, "citations": []},
                    "rag": {"answer": "1887 [1]", "contains": 1.0, "citations": [citation]},
                    "ft": {"answer": '{"answer": "1887"}', "contains": 1.0, "citations": []},
                    "ft_rag": {"answer": "1887", "contains": 1.0, "citations": [citation]},
                },
            }
        ],
    }


def test_verdict_is_written_from_the_numbers() -> None:
    v = write_verdict(canned())
    assert v["knowledge"].startswith("On knowledge, RAG answered best: token F1 0.600 (95% CI ")
    assert (
        "Against Fine-tuned + RAG (F1 0.550) the margin is +0.050, not significant (p = 0.4)."
        in (v["knowledge"])
    )
    assert (
        "Against Base (closed book) (F1 0.100) the margin is +0.500, significant (p = 0.001)."
        in (v["knowledge"])
    )
    assert v["behaviour"].startswith("On behaviour (the required answer format), Fine-tuned")
    assert "100.0% of answers" in v["behaviour"]
    assert "RAG gave the new value for 2/2 right after a 1.2 s re-ingest." in v["freshness"]
    assert (
        "Fine-tuned gave the new value for 0/2 (the old one for 2/2); after retraining "
        "(2.5 min) it gave the new value for 1/2." in v["freshness"]
    )
    assert v["text"] == " ".join([v["knowledge"], v["behaviour"], v["freshness"]])


def test_verdict_says_when_the_fine_tuned_arm_could_not_be_retrained() -> None:
    results = canned()
    ft = results["freshness"]["arms"]["ft"]
    for key in ("reflected_after_retrain", "retrain_s", "seconds_to_reflect"):
        del ft[key]
    ft["how"] = "not retrained: no training example states a changed fact"
    assert (
        "Fine-tuned gave the new value for 0/2 (the old one for 2/2) (not retrained: no "
        "training example states a changed fact)." in write_verdict(results)["freshness"]
    )


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.svgs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))
        self.svgs += tag == "svg"


def test_report_files(tmp_path: Path) -> None:
    paths = write_report(canned(), tmp_path)
    results = json.loads(paths["results"].read_text())
    assert results["schema"] == 2
    assert set(results["arms"]) == {"base", "rag", "ft", "ft_rag"}
    assert results["verdict"]["text"].startswith("On knowledge, RAG")
    page = paths["html"].read_text()
    parsed = _Collect()
    parsed.feed(page)
    assert parsed.svgs == 5  # F1, format, loss curve, cost vs accuracy, latency
    internal = [link for link in parsed.links if link.startswith("#")]
    assert internal and all(link[1:] in parsed.ids for link in internal)  # citations resolve
    assert "When was &lt;Zorbland&gt; founded?" in page  # escaped
    assert "Zorbland &lt;b&gt;1887&lt;/b&gt;" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing to fetch
    md = paths["summary"].read_text()
    assert (
        "| RAG | 4 | 0.500 | 0.600 (0.50–0.70) | 60.0% | 25.0% | 50.0% | 25.0% | 75.0% "
        "| 4.0 s | 1.5 s |" in md
    )
    assert "| 3.3 min (60.0 s) |" in md  # the fine-tuned arm's preparation, of which make-qa
    # Model-made and attributed citations are labelled apart; make-qa is its own cost column.
    for label in (
        "model&#x27;s own [n] citations: precision",
        "answers ragtune attributed post hoc",
        "training data generation (make-qa)",
        "<b>98</b> documents, <b>1478</b> chunks",
        "<b>7/98</b> documents",
    ):
        assert label in page, label
    assert "for 7 of 98 documents" in results["verdict"]["knowledge"]


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    paths = write_report(canned(), tmp_path)
    shot = tmp_path / "shot.png"
    dom = subprocess.run(
        [
            str(chromium()),
            *HEADLESS_FLAGS,
            profile_flag(tmp_path / "profile"),
            "--window-size=1200,3000",
            f"--screenshot={shot}",
            "--dump-dom",
            paths["html"].as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000  # a blank page is a few KB
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "On knowledge, RAG answered best" in dom.stdout
