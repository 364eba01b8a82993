"""Bootstrap intervals and paired tests against hand-computed values."""

from __future__ import annotations

import math

import pytest

from ragtune.evaluate.stats import bootstrap_ci, mcnemar, paired_bootstrap, percentile


def test_bootstrap_ci_fixed_seed() -> None:
    # mean 0.6, n = 10: the normal approximation gives 0.6 ± 1.96·sqrt(0.24/10) = 0.30..0.90
    assert bootstrap_ci([0, 1, 0, 1, 1, 0, 1, 1, 0, 1], seed=0) == (0.3, 0.9)
    assert bootstrap_ci([0.5] * 7, seed=3) == (0.5, 0.5)
    lo, hi = bootstrap_ci([], seed=0)
    assert math.isnan(lo) and math.isnan(hi)


def test_paired_bootstrap() -> None:
    a = [1, 1, 1, 0, 1, 1, 0, 1]
    b = [0, 1, 0, 0, 1, 0, 0, 1]
    assert paired_bootstrap(a, b, seed=0) == pytest.approx(0.05697151424287856, abs=1e-12)
    assert paired_bootstrap(a, a, seed=0) == 1.0  # no difference at all
    assert paired_bootstrap([1, 1, 1], [0, 0, 0], seed=0) == 0.0  # the same gain everywhere


def test_mcnemar_exact() -> None:
    # b01 = 5, b10 = 0: p = 2 · (1/2)^5 = 0.0625
    assert mcnemar([True] * 5 + [False], [False] * 6) == 0.0625
    # b01 = 2, b10 = 1: p = 2 · (C(3,0) + C(3,1)) / 8 = 1.0
    assert mcnemar([True, True, True, False], [False, False, True, True]) == 1.0
    # b01 = 6, b10 = 1: p = 2 · (1 + 7) / 128 = 0.125
    assert mcnemar([True] * 6 + [False], [False] * 6 + [True]) == 0.125
    assert mcnemar([True, False], [True, False]) == 1.0
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


def test_percentile() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
