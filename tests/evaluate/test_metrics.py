from __future__ import annotations

import math

import pytest

from ragtune.evaluate.metrics import dcg, mean_over_queries, mrr_at_k, ndcg_at_k, recall_at_k

QRELS = {"a": 2, "b": 1, "c": 0, "d": 3}  # graded; "c" has grade 0 = not relevant


def test_dcg() -> None:
    assert dcg([3, 2, 1]) == pytest.approx(3 + 2 / math.log2(3) + 1 / 2)
    assert dcg([]) == 0.0


def test_ndcg_graded_hand_computed() -> None:
    # top 3 gains [1, 0, 2]: DCG = 1/log2(2) + 0 + 2/log2(4) = 2
    # ideal gains [3, 2, 1]: 3 + 2/log2(3) + 1/2 = 4.761860
    got = ndcg_at_k(["b", "x", "a", "c"], QRELS, k=3)
    assert got == pytest.approx(2 / (3 + 2 / math.log2(3) + 0.5))
    assert got == pytest.approx(0.420004, abs=1e-6)


def test_ndcg_perfect_empty_and_no_relevant() -> None:
    assert ndcg_at_k(["d", "a", "b"], QRELS, k=10) == pytest.approx(1.0)
    assert ndcg_at_k([], QRELS) == 0.0
    assert ndcg_at_k(["a"], {"a": 0, "b": -1}) == 0.0


def test_ndcg_counts_a_repeated_id_once() -> None:
    assert ndcg_at_k(["d", "d", "a"], QRELS, k=2) == ndcg_at_k(["d", "a"], QRELS, k=2)


def test_ndcg_single_relevant_at_rank_3() -> None:
    assert ndcg_at_k(["x", "y", "z"], {"z": 1}) == pytest.approx(1 / math.log2(4))


def test_recall() -> None:
    assert recall_at_k(["b", "x", "a", "c"], QRELS, k=3) == pytest.approx(2 / 3)
    assert recall_at_k(["b", "x", "a", "c"], QRELS, k=1) == pytest.approx(1 / 3)
    assert recall_at_k(["x"], {"x": 0}) == 0.0


def test_mrr() -> None:
    assert mrr_at_k(["b", "x"], QRELS) == 1.0
    assert mrr_at_k(["x", "c", "a"], QRELS) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "c", "a"], QRELS, k=2) == 0.0


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ndcg_at_k(["a"], QRELS, k=0)


def test_mean_over_queries_scores_missing_queries_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    assert mean_over_queries(ndcg_at_k, {"q1": ["a"]}, qrels, 10) == 0.5
    with pytest.raises(ValueError):
        mean_over_queries(ndcg_at_k, {}, {}, 10)
