"""Freshness: change facts in the documents automatically and see who notices.

A fact is a test question whose gold answer appears verbatim in its gold document.
Changing it replaces every occurrence of the answer in that document with a new value
of the same shape (a different number with as many digits, or invented words with the
same capitalisation), so the new value can only come from the changed document.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ragtune.evaluate.questions import Question

_SMALL = {"the", "of", "and", "a", "an", "in", "on", "de", "la", "von"}
_CONS = "bcdfghklmnprstvz"
_VOWS = "aeiou"


@dataclass(frozen=True)
class FactChange:
    qid: str
    doc_id: str
    old: str
    new: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pseudo_word(rng: random.Random, length: int) -> str:
    letters = [rng.choice(_CONS if i % 2 == 0 else _VOWS) for i in range(max(3, length))]
    return "".join(letters)


def new_value(old: str, rng: random.Random, forbidden: str) -> str:
    """A replacement for ``old`` with the same shape that does not occur in ``forbidden``."""
    for _ in range(100):
        if re.fullmatch(r"\d{1,3}(,\d{3})+|\d+", old):
            digits = old.replace(",", "")
            low = 10 ** (len(digits) - 1) if len(digits) > 1 else 0
            value = str(rng.randint(low, 10 ** len(digits) - 1))
            if "," in old:
                value = f"{int(value):,}"
        else:
            words = []
            for w in old.split():
                if w.lower() in _SMALL or not any(ch.isalpha() for ch in w):
                    words.append(w)
                    continue
                nw = _pseudo_word(rng, len(w))
                words.append(nw.capitalize() if w[0].isupper() else nw)
            value = " ".join(words)
        if value != old and value not in forbidden:
            return value
    raise ValueError(f"could not find a new value for {old!r}")


def plan_changes(
    questions: Sequence[Question], documents: Mapping[str, str], n: int, seed: int = 0
) -> list[FactChange]:
    """Pick up to ``n`` test questions whose answer occurs in their gold document (one per
    document, short answers first, seeded order) and plan a new value for each."""
    rng = random.Random(seed)
    candidates = []
    for q in questions:
        for doc_id in q.doc_ids:
            text = documents.get(doc_id)
            answer = next((a for a in q.answers if a.strip() and text and a in text), None)
            if answer is not None and len(answer.split()) <= 5:
                candidates.append((q, doc_id, answer))
                break
    rng.shuffle(candidates)
    candidates.sort(key=lambda c: len(c[2].split()))  # stable: seeded order within a length
    changes: list[FactChange] = []
    used_docs: set[str] = set()
    for q, doc_id, answer in candidates:
        if len(changes) >= n:
            break
        if doc_id in used_docs:
            continue
        used_docs.add(doc_id)
        changes.append(FactChange(q.qid, doc_id, answer, new_value(answer, rng, documents[doc_id])))
    return changes


def apply_change(text: str, change: FactChange) -> str:
    """The document text with every occurrence of the old value replaced."""
    return text.replace(change.old, change.new)
