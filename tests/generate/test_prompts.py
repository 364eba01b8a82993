"""Prompt layouts, source packing and citations."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ragtune.generate.answer import attribute, cite, with_markers
from ragtune.generate.prompts import (
    chat_prompt,
    pack_sources,
    parse_citations,
    rag_messages,
    render_chat_segments,
    strip_citations,
)
from ragtune.types import Chunk, Hit, Message


@pytest.fixture(scope="module")
def tokenizer(tiny_lm: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(str(tiny_lm))


def hit(i: int, text: str, doc: str = "d") -> Hit:
    c = Chunk(f"{doc}#{i}", doc, i, text, 10 * i, 10 * i + len(text), f"/x/{doc}", "T")
    return Hit(c, 1.0 / (i + 1), i + 1)


def test_plain_layout_segments(tokenizer) -> None:  # type: ignore[no-untyped-def]
    msgs = [
        Message("system", "Be brief."),
        Message("user", "Capital of France?"),
        Message("assistant", "Paris"),
        Message("user", "And Italy?"),
        Message("assistant", "Rome", weight=0),
    ]
    assert render_chat_segments(msgs, tokenizer) == [
        ("Be brief.", False),
        ("\n\nQuestion: Capital of France?\nAnswer:", False),
        (" Paris<eos>", True),
        ("\n\nQuestion: And Italy?\nAnswer:", False),
        (" Rome<eos>", False),
    ]
    # The inference prompt is exactly the training text up to where the answer starts.
    assert chat_prompt(msgs[:2], tokenizer) == "Be brief.\n\nQuestion: Capital of France?\nAnswer:"


def test_raw_text_example_has_no_prompt(tokenizer) -> None:  # type: ignore[no-untyped-def]
    assert render_chat_segments([Message("assistant", "A document.")], tokenizer) == [
        ("A document.<eos>", True)
    ]


def test_pack_sources_keeps_what_fits(tokenizer) -> None:  # type: ignore[no-untyped-def]
    hits = [hit(0, "short one"), hit(1, "x " * 200), hit(2, "also short")]
    count = lambda s: len(tokenizer(s)["input_ids"])  # noqa: E731
    packed = pack_sources(hits, count, budget=40)
    assert [h.rank for h, _ in packed] == [1, 3]  # the long one is skipped, later ones fit
    assert [b.split("\n")[0] for _, b in packed] == ["[1] T", "[2] T"]
    only = pack_sources([hits[1]], count, budget=30)
    assert len(only) == 1 and count(only[0][1]) <= 30


def test_rag_messages_number_the_sources() -> None:
    msgs = rag_messages("Q?", ["[1] a\nA", "[2] b\nB"], instruction="Use sources.")
    assert msgs == [
        Message("system", "Use sources.\n\n[1] a\nA\n\n[2] b\nB"),
        Message("user", "Q?"),
    ]


def test_citations() -> None:
    assert parse_citations("Paris [2] and [1], again [2]; bogus [9]", 3) == [2, 1]
    assert strip_citations("Paris [2] and [1].") == "Paris and ."
    hits = [hit(0, "The sea is blue."), hit(1, "Zorbland was founded in 1887 by Mira Quell.")]
    model_cited = cite("1887 [2]", hits)
    assert [(c.marker, c.doc_id, c.start, c.end, c.how) for c in model_cited] == [
        (2, "d", 10, 10 + len(hits[1].chunk.text), "model")
    ]
    attributed = cite("Mira Quell", hits)
    assert [(c.marker, c.how) for c in attributed] == [(2, "attributed")]
    # A model citation that its source does not support is replaced by attribution.
    wrong = cite("Mira Quell [1]", hits)
    assert [(c.marker, c.how) for c in wrong] == [(2, "attributed")]
    assert with_markers("Mira Quell [1]", wrong) == "Mira Quell [2]"
    assert with_markers("nothing", []) == "nothing"
    assert cite("something else entirely", hits) == []
    assert attribute("blue sea", hits) == 1
