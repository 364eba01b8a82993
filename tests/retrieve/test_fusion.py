from __future__ import annotations

import pytest

from ragtune.retrieve.fusion import (
    convex_combination_fusion,
    min_max_normalize,
    reciprocal_rank_fusion,
)


def test_rrf_unweighted_hand_computed() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]], k=60)
    # b: 1/62 + 1/61, c: 1/63 + 1/62, a: 1/61, d: 1/63
    assert [doc for doc, _ in fused] == ["b", "c", "a", "d"]
    expected = {"b": 1 / 62 + 1 / 61, "c": 1 / 63 + 1 / 62, "a": 1 / 61, "d": 1 / 63}
    for doc, score in fused:
        assert score == pytest.approx(expected[doc], abs=1e-15)


def test_rrf_weighted_hand_computed() -> None:
    fused = dict(reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]], [2.0, 1.0], k=60))
    assert fused["a"] == pytest.approx(2 / 61)
    assert fused["b"] == pytest.approx(2 / 62 + 1 / 61)
    assert fused["c"] == pytest.approx(2 / 63 + 1 / 62)
    assert fused["d"] == pytest.approx(1 / 63)


def test_rrf_weight_zero_ignores_a_ranking_but_keeps_its_ids_last() -> None:
    fused = reciprocal_rank_fusion([["a"], ["b"]], [1.0, 0.0])
    assert fused == [("a", 1 / 61), ("b", 0.0)]


def test_rrf_ties_break_by_first_appearance() -> None:
    # k = 1: a = 1/2 + 1/3 = b, so a (seen first) comes first.
    assert [d for d, _ in reciprocal_rank_fusion([["a", "b"], ["b", "a"]], k=1)] == ["a", "b"]
    assert [d for d, _ in reciprocal_rank_fusion([["y"], ["x"]])] == ["y", "x"]


def test_rrf_counts_a_repeated_id_once_at_its_best_rank() -> None:
    assert reciprocal_rank_fusion([["a", "a", "b"]], k=0) == [("a", 1.0), ("b", 1 / 3)]


def test_rrf_edge_cases() -> None:
    assert reciprocal_rank_fusion([]) == []
    assert reciprocal_rank_fusion([[], []]) == []
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], [1.0, 2.0])
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], k=-1)
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], [-1.0])


def test_min_max_normalize() -> None:
    assert min_max_normalize({"a": 2.0, "b": 4.0, "c": 3.0}) == {"a": 0.0, "b": 1.0, "c": 0.5}
    assert min_max_normalize({"a": 7.0, "b": 7.0}) == {"a": 1.0, "b": 1.0}
    assert min_max_normalize({}) == {}


def test_convex_combination_hand_computed() -> None:
    bm25 = {"a": 10.0, "b": 6.0, "c": 2.0}  # -> a 1, b 0.5, c 0
    dense = {"b": 0.9, "d": 0.5}  # -> b 1, d 0
    fused = convex_combination_fusion([bm25, dense], [0.5, 1.0])
    # a: 0.5 * 1 = 0.5; b: 0.5 * 0.5 + 1 = 1.25; c: 0; d: 0 (ties: c seen before d)
    assert fused == [("b", 1.25), ("a", 0.5), ("c", 0.0), ("d", 0.0)]
