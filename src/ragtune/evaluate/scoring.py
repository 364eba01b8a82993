"""Scoring a comparison's answers: per-question metrics, arm means with bootstrap
intervals, and paired significance tests between arms.

Citations are scored two ways, kept apart: the ``[n]`` markers the model wrote itself
(``citations_model_precision``: share of them that point at a gold source; ``cited_share``:
share of answers with at least one), and the citation ragtune attaches afterwards when
none of the model's survives the support check (``attributed_share``). A pipeline that
only attributes post hoc must not look like a model that cites.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ragtune.evaluate.formats import FormatSpec
from ragtune.evaluate.metrics import (
    answer_contains,
    answer_support,
    exact_match,
    normalize_answer,
    token_f1,
)
from ragtune.evaluate.questions import Question
from ragtune.evaluate.stats import bootstrap_ci, mcnemar, paired_bootstrap
from ragtune.generate.prompts import strip_citations


def _is_gold(doc_id: str, text: str, gold_docs: set[str], golds: list[str]) -> bool:
    """A source is correct when it is a gold document or contains a gold answer."""
    return doc_id in gold_docs or any(g in normalize_answer(text) for g in golds)


def score_answer(
    q: Question, answer: dict[str, Any], fmt: FormatSpec | None, rag: bool
) -> dict[str, Any]:
    """Per-question metrics of one arm's answer (absent where not applicable).

    ``answer`` is an arm's answer record: ``answer`` (text), and for RAG arms ``hits`` (the
    sources as numbered in the prompt), ``citations`` (final, after attribution) and
    ``model_markers`` (the ``[n]`` the model itself wrote, valid numbers only).
    """
    text = answer["answer"]
    pred = strip_citations(fmt.extract(text) if fmt else text)
    hits = answer.get("hits", [])
    citations = answer.get("citations", [])
    gold_docs = set(q.doc_ids)
    golds = [normalize_answer(g) for g in q.answers if normalize_answer(g)]
    r: dict[str, Any] = {"answer": text, "pred": pred, "citations": citations}
    if q.answers:
        r["em"] = exact_match(pred, q.answers)
        r["f1"] = token_f1(pred, q.answers)
        r["contains"] = answer_contains(pred, q.answers)
    if fmt:
        r["format_ok"] = float(fmt.check(text))
    if rag:
        docs = [h["chunk"]["doc_id"] for h in hits]
        texts = [normalize_answer(h["chunk"]["text"]) for h in hits]
        if gold_docs:
            r["recall"] = len(gold_docs & set(docs)) / len(gold_docs)
        elif golds:
            r["recall"] = float(any(g in t for g in golds for t in texts))
        r["citation_correct"] = float(
            any(_is_gold(c["doc_id"], c["text"], gold_docs, golds) for c in citations)
        )
        markers = [n for n in answer.get("model_markers", []) if 1 <= n <= len(hits)]
        r["model_markers"] = len(markers)
        r["model_markers_correct"] = sum(
            _is_gold(hits[n - 1]["chunk"]["doc_id"], hits[n - 1]["chunk"]["text"], gold_docs, golds)
            for n in markers
        )
        r["cited"] = float(bool(markers))
        r["attributed"] = float(any(c.get("how") == "attributed" for c in citations))
        context = " ".join(h["chunk"]["text"] for h in hits)
        r["grounded"] = answer_support(pred, context) if pred.strip() else 0.0
    return r


def _mean_ci(values: list[float], seed: int) -> tuple[float | None, list[float] | None]:
    if not values:
        return None, None
    lo, hi = bootstrap_ci(values, seed=seed)
    return sum(values) / len(values), [lo, hi]


MEANS = (
    ("em", "em"),
    ("f1", "f1"),
    ("contains", "contains"),
    ("format_ok", "format_ok"),
    ("recall", "recall_at_k"),
    ("citation_correct", "citation_correct"),
    ("cited", "cited_share"),
    ("attributed", "attributed_share"),
    ("grounded", "grounded"),
)
WITH_CI = ("em", "f1", "contains", "format_ok")


def aggregate(
    per_question: list[dict[str, Any]], seed: int, groups: Sequence[str | None] = ()
) -> dict[str, Any]:
    """Arm-level means (with 95% bootstrap intervals for the accuracy metrics).

    ``groups`` (one per question, or empty) splits F1 by question group: the demo's
    ``seen_template`` / ``unseen_template`` give ``f1_seen_template`` / ``f1_unseen_template``.
    """
    out: dict[str, Any] = {"n": len(per_question)}
    for key, name in MEANS:
        values = [r[key] for r in per_question if key in r]
        mean, ci = _mean_ci(values, seed)
        out[name] = mean
        if key in WITH_CI:
            out[f"{name}_ci"] = ci
    markers = sum(r.get("model_markers", 0) for r in per_question)
    correct = sum(r.get("model_markers_correct", 0) for r in per_question)
    rag = any("model_markers" in r for r in per_question)
    out["citations_model_precision"] = correct / markers if rag and markers else None
    out["model_citations"] = markers if rag else None
    for g in sorted({g for g in groups if g}):
        values = [r["f1"] for r, gq in zip(per_question, groups, strict=True) if gq == g]
        if values and "f1" in per_question[0]:
            out[f"f1_{g}"] = sum(values) / len(values)
            out[f"n_{g}"] = len(values)
    return out


def _test(
    a: str, b: str, metric: str, test: str, xa: list[Any], xb: list[Any], p: float
) -> dict[str, Any]:
    diff = (sum(xa) - sum(xb)) / len(xa)
    return {"a": a, "b": b, "metric": metric, "test": test, "diff": diff, "p": p}


def significance(scored: dict[str, list[dict[str, Any]]], seed: int) -> list[dict[str, Any]]:
    """Paired tests between every two arms: bootstrap on F1 (Berg-Kirkpatrick et al. 2012),
    exact McNemar on answer-found and format adherence."""
    arms = list(scored)
    tests = []
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            ra, rb = scored[a], scored[b]
            if ra and "f1" in ra[0]:
                fa, fb = [r["f1"] for r in ra], [r["f1"] for r in rb]
                p = paired_bootstrap(fa, fb, seed=seed)
                tests.append(_test(a, b, "f1", "paired bootstrap", fa, fb, p))
                ca, cb = [r["contains"] > 0 for r in ra], [r["contains"] > 0 for r in rb]
                tests.append(_test(a, b, "contains", "McNemar (exact)", ca, cb, mcnemar(ca, cb)))
            if ra and "format_ok" in ra[0]:
                ga, gb = [r["format_ok"] > 0 for r in ra], [r["format_ok"] > 0 for r in rb]
                tests.append(_test(a, b, "format_ok", "McNemar (exact)", ga, gb, mcnemar(ga, gb)))
    return tests
