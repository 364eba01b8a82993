"""Evaluation metrics as pure functions.

Retrieval metrics follow BEIR / pytrec_eval (trec_eval) conventions: ``ranked`` is a
system's ids best first, ``qrels`` maps ids to relevance grades, and a grade <= 0 means
not relevant. A query without relevant ids scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from ragtune.text import answer_support as answer_support
from ragtune.text import normalize_answer as normalize_answer
from ragtune.text import token_f1 as token_f1

# --- retrieval metrics ---------------------------------------------------------------------


def _top_k(ranked: Sequence[str], k: int) -> list[str]:
    """The first ``k`` distinct ids (a run is a set of ids: repeats count once)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    seen: set[str] = set()
    out: list[str] = []
    for doc_id in ranked:
        if doc_id not in seen:
            seen.add(doc_id)
            out.append(doc_id)
            if len(out) == k:
                break
    return out


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain, ``sum_i gain_i / log2(i + 1)`` with 1-based ranks i."""
    return sum(g / math.log2(i + 1) for i, g in enumerate(gains, start=1))


def ndcg_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k, ``DCG@k / ideal DCG@k`` with gain = grade (Järvelin & Kekäläinen 2002; trec_eval)."""
    gains = [max(qrels.get(doc_id, 0), 0) for doc_id in _top_k(ranked, k)]
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    ideal_dcg = dcg(ideal)
    return dcg(gains) / ideal_dcg if ideal_dcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 100) -> float:
    """Recall@k, ``|relevant ∩ top k| / |relevant|`` (BEIR's Recall@k)."""
    relevant = {doc_id for doc_id, g in qrels.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(_top_k(ranked, k))) / len(relevant)


def mrr_at_k(ranked: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """Reciprocal rank of the first relevant id in the top k, else 0 (Voorhees 1999, TREC-8 QA)."""
    for rank, doc_id in enumerate(_top_k(ranked, k), start=1):
        if qrels.get(doc_id, 0) > 0:
            return 1.0 / rank
    return 0.0


RetrievalMetric = Callable[[Sequence[str], Mapping[str, int], int], float]


def mean_over_queries(
    metric: RetrievalMetric,
    run: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    k: int,
) -> float:
    """Mean of ``metric`` over every query in ``qrels``; a query missing from ``run`` scores 0."""
    if not qrels:
        raise ValueError("no queries in qrels")
    total = sum(metric(run.get(qid, []), rels, k) for qid, rels in qrels.items())
    return total / len(qrels)


# --- answer metrics (normalisation and token overlap live in ragtune.text) ----------------


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer (SQuAD EM)."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def answer_contains(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if any normalised gold answer occurs in the normalised prediction as whole words."""
    pred = f" {normalize_answer(prediction)} "
    return float(any(g and f" {g} " in pred for g in map(normalize_answer, golds)))
