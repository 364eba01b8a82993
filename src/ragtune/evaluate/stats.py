"""Confidence intervals and paired significance tests for per-question scores.

All resampling is seeded, so a report's numbers are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean (Efron & Tibshirani 1993, ch. 13)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_resamples, len(x)))  # (R, n)
    means = x[idx].mean(axis=1)  # (R,)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 2000, seed: int = 0
) -> float:
    """Two-sided p-value that mean(a) and mean(b) differ, for scores on the same questions.

    Paired bootstrap of the differences, centred under the null (Berg-Kirkpatrick et al.
    2012, "An Empirical Investigation of Statistical Significance in NLP"):
    p = P(|mean(d*) − mean(d)| ≥ |mean(d)|).
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) == 0:
        return float("nan")
    observed = d.mean()
    if np.all(d == d[0]):
        return 1.0 if observed == 0 else 0.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_resamples, len(d)))  # (R, n)
    means = d[idx].mean(axis=1)  # (R,)
    extreme = np.sum(np.abs(means - observed) >= abs(observed))
    return float((extreme + 1) / (n_resamples + 1))


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact two-sided McNemar test (McNemar 1947) on paired right/wrong outcomes:
    with b01 = a right & b wrong and b10 = the reverse, p = min(1, 2·P[Bin(b01+b10, ½) ≤ min])."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    b01 = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b10 = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = b01 + b10
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b01, b10) + 1)) / 2**n
    return min(1.0, 2 * tail)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation, as numpy's default); NaN when empty."""
    return float(np.percentile(values, q)) if len(values) else float("nan")
