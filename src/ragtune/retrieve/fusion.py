"""Combining several rankings of the same ids into one.

Both functions return ``(id, fused score)`` pairs, best first. Ties are broken by first
appearance: the order in which ids are first met reading ``rankings[0]`` top to bottom,
then ``rankings[1]``, and so on, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} rankings")
    if any(w < 0 for w in weights):
        raise ValueError(f"fusion weights must be >= 0, got {list(weights)}")
    return [float(w) for w in weights]


def _sorted(scores: dict[str, float]) -> list[tuple[str, float]]:
    # dicts keep insertion (= first appearance) order and sorted() is stable.
    return sorted(scores.items(), key=lambda item: -item[1])


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]],
    weights: Sequence[float] | None = None,
    k: int = 60,
) -> list[tuple[str, float]]:
    """Weighted RRF, ``score(d) = sum_i w_i / (k + rank_i(d))`` with 1-based ranks
    (Cormack, Clarke & Büttcher 2009, "Reciprocal rank fusion outperforms Condorcet and
    individual rank learning methods"). An id repeated within one ranking counts once, at
    its best rank."""
    if k < 0:
        raise ValueError(f"the RRF constant k must be >= 0, got {k}")
    ws = _weights(len(rankings), weights)
    scores: dict[str, float] = {}
    for ranking, w in zip(rankings, ws, strict=True):
        seen: set[str] = set()
        for rank, doc_id in enumerate(ranking, start=1):
            if doc_id in seen:
                continue
            seen.add(doc_id)
            scores[doc_id] = scores.get(doc_id, 0.0) + w / (k + rank)
    return _sorted(scores)


def min_max_normalize(scores: Mapping[str, float]) -> dict[str, float]:
    """``(s - min) / (max - min)`` over the given scores; all 1.0 when they are equal."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    if hi == lo:
        return dict.fromkeys(scores, 1.0)
    return {doc_id: (s - lo) / (hi - lo) for doc_id, s in scores.items()}


def convex_combination_fusion(
    scored: Sequence[Mapping[str, float]],
    weights: Sequence[float] | None = None,
) -> list[tuple[str, float]]:
    """``score(d) = sum_i w_i * minmax_i(s_i(d))``, an id missing from a list scoring 0 there
    (Bruch, Gai & Ingber 2023, "An analysis of fusion functions for hybrid retrieval").

    Each mapping holds one retriever's candidates and raw scores; min-max normalisation is
    over those candidates. ``rankings`` order for tie-breaking is each mapping's order.
    """
    ws = _weights(len(scored), weights)
    fused: dict[str, float] = {}
    for candidates, w in zip(scored, ws, strict=True):
        for doc_id, s in min_max_normalize(candidates).items():
            fused[doc_id] = fused.get(doc_id, 0.0) + w * s
    return _sorted(fused)
