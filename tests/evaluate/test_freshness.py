"""Automatic fact changes."""

from __future__ import annotations

import random

from ragtune.evaluate.freshness import FactChange, apply_change, new_value, plan_changes
from ragtune.evaluate.questions import Question


def test_new_values_keep_the_shape() -> None:
    rng = random.Random(0)
    year = new_value("1887", rng, "founded in 1887")
    assert len(year) == 4 and year.isdigit() and year != "1887"
    big = new_value("12,500", rng, "")
    assert big != "12,500" and "," in big and len(big) == 6
    name = new_value("the Vorn River", rng, "")
    words = name.split()
    assert words[0] == "the" and words[1][0].isupper() and words[2][0].isupper()
    assert name != "the Vorn River"


def test_plan_changes_picks_answers_found_in_their_document() -> None:
    docs = {"a": "Zorbland was founded in 1887.", "b": "The sea is blue.", "c": "Vetrin is old."}
    qs = [
        Question("1", "When was Zorbland founded?", ["1887"], ["a"]),
        Question("2", "What colour is the sea?", ["green"], ["b"]),  # not in the document
        Question("3", "Which town is old?", ["Vetrin"], ["c"]),
        Question("4", "Founding year again?", ["1887"], ["a"]),  # same document as 1
    ]
    changes = plan_changes(qs, docs, n=5, seed=0)
    assert sorted(c.qid for c in changes) == ["1", "3"] or sorted(c.qid for c in changes) == [
        "3",
        "4",
    ]
    assert plan_changes(qs, docs, n=5, seed=0) == changes  # seeded
    for c in changes:
        assert c.old in docs[c.doc_id] and c.new not in docs[c.doc_id]
    assert len(plan_changes(qs, docs, n=1, seed=0)) == 1


def test_apply_change_replaces_every_occurrence() -> None:
    c = FactChange("1", "a", "1887", "1903")
    assert apply_change("1887 and 1887", c) == "1903 and 1903"
