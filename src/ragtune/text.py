"""Leaf text helpers shared by generate/, tune/ and evaluate/: answer normalisation and
token overlap. Scoring functions built on them live in ``evaluate/metrics.py``."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation (Rajpurkar et al. 2016): lowercase, drop punctuation and the
    articles a/an/the, collapse whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Max over gold answers of the token-bag F1 = 2PR/(P+R) on normalised tokens (SQuAD)."""
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, normalize_answer(g).split()) for g in golds), default=0.0)


def answer_support(answer: str, context: str) -> float:
    """Share of the answer's normalised tokens that occur in ``context`` (0 for an empty
    answer): the groundedness of an answer in the text it was given."""
    tokens = normalize_answer(answer).split()
    if not tokens:
        return 0.0
    vocab = set(normalize_answer(context).split())
    return sum(t in vocab for t in tokens) / len(tokens)
