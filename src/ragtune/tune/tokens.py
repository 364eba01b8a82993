"""Tokenization of training examples: token ids and labels in the layout inference uses
(:func:`ragtune.generate.prompts.render_chat_segments`), cut into training sequences of at
most ``max_length`` tokens and held as compact int32 arrays."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragtune.generate.prompts import render_chat_segments
from ragtune.types import Example

log = logging.getLogger(__name__)

IGNORE = -100  # label of positions that are not trained on (PyTorch's cross-entropy default)


@dataclass(frozen=True, eq=False)
class TokenSequence:
    """One training sequence: token ids and labels (``IGNORE`` where nothing is trained),
    as int32 arrays: 8 bytes a token, where Python lists of ints take about 70."""

    input_ids: np.ndarray  # (T,) int32
    labels: np.ndarray  # (T,) int32
    example: int  # index of the Example it came from

    @classmethod
    def of(cls, input_ids: Sequence[int], labels: Sequence[int], example: int) -> TokenSequence:
        return cls(np.asarray(input_ids, np.int32), np.asarray(labels, np.int32), example)

    @property
    def n_targets(self) -> int:
        """Positions that carry a loss: labelled tokens after the first (which has no context)."""
        return int(np.count_nonzero(self.labels[1:] != IGNORE))


def bos_to_prepend(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer adds one to plain text by default (Gemma, Llama), else None."""
    with_special = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and len(with_special) > len(without) and with_special[0] == bos:
        return int(bos)
    return None


def is_document(example: Example) -> bool:
    """A single assistant message with no prompt: continued pre-training on raw text."""
    return len(example.messages) == 1 and example.messages[0].role == "assistant"


def encode_example(
    example: Example, tokenizer: Any, bos: int | None
) -> tuple[list[int], list[int]]:
    """Token ids and labels in the layout inference uses (``render_chat_segments``)."""
    pieces = render_chat_segments(example.messages, tokenizer)
    text_has_bos = (
        bool(pieces) and bool(tokenizer.bos_token) and pieces[0][0].startswith(tokenizer.bos_token)
    )
    ids: list[int] = [bos] if bos is not None and not text_has_bos else []
    labels: list[int] = [IGNORE] * len(ids)
    for text, trained in pieces:
        piece = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    return ids, labels


def split_sequence(
    index: int,
    example: Example,
    ids: list[int],
    labels: list[int],
    bos: int | None,
    max_length: int,
) -> list[TokenSequence]:
    """One encoded example as training sequences of at most ``max_length`` tokens: a
    document cut into consecutive windows (each keeping the BOS token), a conversation
    truncated at the end."""
    if len(ids) <= max_length:
        return [TokenSequence.of(ids, labels, index)]
    if not is_document(example):
        return [TokenSequence.of(ids[:max_length], labels[:max_length], index)]
    start = 1 if bos is not None else 0
    prefix = ids[:start]
    body, body_labels = ids[start:], labels[start:]
    width = max_length - len(prefix)
    return [
        TokenSequence.of(
            prefix + body[s : s + width], [IGNORE] * len(prefix) + body_labels[s : s + width], index
        )
        for s in range(0, len(body), width)
    ]


class Encoder:
    """Tokenizes examples one at a time, as they are read, into training sequences of at
    most ``max_length`` tokens (so a large data file never has to be held as parsed
    examples: only the compact sequences are kept).

    Documents longer than that are cut into consecutive windows (nothing is lost);
    conversations are truncated at the end, as OpenAI does.
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.bos = bos_to_prepend(tokenizer)
        self.sequences: list[TokenSequence] = []
        self.truncated: list[int] = []  # indices of the conversations cut at max_length

    def add(self, index: int, example: Example) -> None:
        ids, labels = encode_example(example, self.tokenizer, self.bos)
        pieces = split_sequence(index, example, ids, labels, self.bos, self.max_length)
        if len(ids) > self.max_length and not is_document(example):
            self.truncated.append(index)
        self.sequences.extend(pieces)

    def result(self) -> tuple[list[TokenSequence], list[int]]:
        """The sequences with something to train on, and the truncated conversations."""
        kept = [s for s in self.sequences if s.n_targets > 0]
        if len(kept) < len(self.sequences):
            log.warning(
                "%d sequence(s) have no trained tokens left and are skipped",
                len(self.sequences) - len(kept),
            )
        return kept, self.truncated


def encode(
    examples: Sequence[Example], tokenizer: Any, max_length: int
) -> tuple[list[TokenSequence], list[int]]:
    """Tokenize examples into training sequences (see :class:`Encoder`). Returns the
    sequences and the indices of the conversations that were truncated."""
    encoder = Encoder(tokenizer, max_length)
    for i, ex in enumerate(examples):
        encoder.add(i, ex)
    return encoder.result()
