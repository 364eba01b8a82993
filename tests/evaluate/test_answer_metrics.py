"""Answer metrics (SQuAD normalisation, EM, F1, contains, support) by hand."""

from __future__ import annotations

import pytest

from ragtune.evaluate.metrics import (
    answer_contains,
    answer_support,
    exact_match,
    normalize_answer,
    token_f1,
)


def test_normalize_answer() -> None:
    assert normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert normalize_answer("An apple a day") == "apple day"


def test_exact_match() -> None:
    assert exact_match("the Paris.", ["Paris"]) == 1.0
    assert exact_match("Paris, France", ["Paris", "Rome"]) == 0.0


def test_token_f1() -> None:
    # pred {paris, city}, gold {paris}: P = 1/2, R = 1, F1 = 2/3
    assert token_f1("Paris city", ["Paris"]) == pytest.approx(2 / 3)
    # best over golds: "new york city" vs "york" -> P=1/3, R=1 -> 0.5; vs "new york" -> 0.8
    assert token_f1("New York City", ["York", "New York"]) == pytest.approx(0.8)
    assert token_f1("", ["x"]) == 0.0
    assert token_f1("a", ["the"]) == 1.0  # both normalise to nothing


def test_answer_contains_whole_words() -> None:
    assert answer_contains("It was founded in 1887 [1]", ["1887"]) == 1.0
    assert answer_contains("18875", ["1887"]) == 0.0
    assert answer_contains("Mira Quell founded it", ["mira quell"]) == 1.0


def test_answer_support() -> None:
    # 3 answer tokens; "paris" and "big" occur in the context, "very" does not
    assert answer_support("Paris very big", "Paris is a big city") == pytest.approx(2 / 3)
    assert answer_support("", "anything") == 0.0
