"""Chunking: boundary classes and windows on token indices, then real (tiny) tokenizers."""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ragtune.errors import RagtuneError
from ragtune.ingest.chunking import (
    Boundary,
    boundary_classes,
    chunk_document,
    iter_chunks,
    split_windows,
)
from ragtune.types import Chunk, Document
from tests.conftest import shared_data

P, S, L, W, T, X = (
    Boundary.PARAGRAPH,
    Boundary.SENTENCE,
    Boundary.LINE,
    Boundary.SPACE,
    Boundary.TOKEN,
    Boundary.INSIDE_CHAR,
)

PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog. A second sentence follows here!",
    "Retrieval augmented generation retrieves passages. It gives them to the model.",
    "Fine-tuning changes the weights of a pretrained model. It uses backpropagation.",
    "Zorbland was founded in 1887 by Mira Quell. Its capital is Vetrin.",
]
TEXT = "\n\n".join(PARAGRAPHS) + "\n"


@pytest.fixture(scope="module")
def tokenizer(tiny_embedder: Path) -> Any:
    """The tiny embedder's WordPiece tokenizer. Its trained vocabulary can differ from one
    process to the next (tie-breaking in the trainer), so tests with it check invariants;
    tests that pin exact chunks use ``word_tokenizer``."""
    return AutoTokenizer.from_pretrained(tiny_embedder)


@pytest.fixture(scope="module")
def word_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic fast tokenizer: one token per word or punctuation mark of TEXT."""
    words = sorted({TEXT[a:b].lower() for a, b in word_offsets(TEXT)})
    vocab = {w: i for i, w in enumerate(["[UNK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", model_max_length=16)


def word_offsets(text: str) -> list[tuple[int, int]]:
    """Offsets of a BERT-like pre-tokenization: words and single punctuation marks."""
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


def n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def check_chunks(doc: Document, chunks: list[Chunk], tokenizer: Any, chunk_tokens: int) -> None:
    """The invariants every chunking must satisfy."""
    assert chunks, "a text with tokens has chunks"
    for i, chunk in enumerate(chunks):
        assert chunk.chunk_id == f"{doc.doc_id}#{i}"
        assert (chunk.doc_id, chunk.index) == (doc.doc_id, i)
        assert chunk.text == doc.text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip() and chunk.text
        assert n_tokens(tokenizer, chunk.text) <= chunk_tokens
    assert chunks[0].start == len(doc.text) - len(doc.text.lstrip())
    assert chunks[-1].end == len(doc.text.rstrip())
    for prev, nxt in itertools.pairwise(chunks):
        assert prev.start < nxt.start and prev.end < nxt.end
        assert not doc.text[prev.end : nxt.start].strip(), "no text falls between chunks"


# --- boundary_classes ----------------------------------------------------------------------


def test_boundary_classes_from_gaps_between_tokens() -> None:
    text = 'One two.  Three\n\nFour\n"Five!" Six e.g. seven\n \n'
    #       One two .   Three Four "   Five !  "  Six e  .  g  .  seven end
    expected = [P, W, T, S, P, L, T, T, T, S, W, T, T, T, W, P]
    assert boundary_classes(text, word_offsets(text)) == expected


def test_boundary_classes_when_tokens_carry_whitespace() -> None:
    """Byte-level BPE style: ' two', '\\n\\n' are tokens; whitespace is not in gaps."""
    text = "One two.\n\nThree"
    offsets = [(0, 3), (3, 7), (7, 8), (8, 10), (10, 15)]  # One| two|.|\n\n|Three
    assert boundary_classes(text, offsets) == [P, W, T, P, P, P]


def test_boundary_classes_inside_a_character() -> None:
    text = "a 😀b"  # the emoji is split into two byte tokens with the same offsets
    offsets = [(0, 1), (2, 3), (2, 3), (3, 4)]
    assert boundary_classes(text, offsets) == [P, W, X, T, P]
    assert boundary_classes("", []) == [P]


def test_sentence_end_needs_whitespace_and_no_lowercase_after() -> None:
    text = "v1.2 ok. next) Done.) Go 3.5"
    assert boundary_classes(text, word_offsets(text)) == [
        P,
        T,
        T,
        W,
        T,
        W,
        T,
        W,
        T,
        T,
        S,
        W,
        T,
        T,
        P,
    ]


def reference_classes(text: str, offsets: list[tuple[int, int]]) -> list[int]:
    """The definition of boundary_classes, written plainly (and slowly)."""
    classes = [int(P)]
    for (_, prev_end), (start, _) in itertools.pairwise(offsets):
        if prev_end > start:
            classes.append(X)
            continue
        runs = [m for m in re.finditer(r"\s+", text) if m.start() <= start <= m.end()]
        if not runs:
            classes.append(T)
            continue
        a, b = runs[0].span()
        after_closers = text[:a].rstrip("\"')]}»”’")
        sentence = len(text[:a]) - len(after_closers) <= 3 and after_closers[-1:] in list(".!?…")
        sentence = sentence and a > 0 and not text[b : b + 1].islower()
        newlines = text[a:b].count("\n")
        classes.append(P if newlines >= 2 else S if sentence else L if newlines else W)
    return [*classes, P] if offsets else [P]


def test_boundary_classes_match_their_definition_on_random_texts() -> None:
    rng = random.Random(0)
    pieces = ["word", "Word", "e", ".", "!", "?", ")", "\u201d", "'", " ", " ", " ", "  ", "\n"]
    pieces += ["\n\n", " \n ", "\t", "\u00a0", "\u2026", "x.y"]
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        words = word_offsets(text)
        # Tokens that carry the whitespace before them, as byte-level BPE does.
        carried = [(m.start(), m.end()) for m in re.finditer(r"\s*(?:\w+|[^\w\s])", text)]
        pieces_of_words = [
            span for a, b in words for span in ([(a, a + 1), (a + 1, b)] if b - a > 1 else [(a, b)])
        ]
        for offsets in (words, carried, pieces_of_words):
            assert boundary_classes(text, offsets) == reference_classes(text, offsets), (
                text,
                offsets,
            )


# --- split_windows -------------------------------------------------------------------------


def test_windows_without_boundaries_step_by_chunk_minus_overlap() -> None:
    classes = [P] + [T] * 9 + [P]  # 10 tokens
    assert split_windows(classes, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert split_windows(classes, 4, 0) == [(0, 4), (4, 8), (8, 10)]
    assert split_windows(classes, 1, 0) == [(i, i + 1) for i in range(10)]
    assert split_windows(classes, 10, 5) == [(0, 10)]
    assert split_windows([P], 4, 2) == []


def test_window_ends_prefer_best_class_then_latest() -> None:
    classes = [P] + [T] * 19 + [P]  # 20 tokens, chunk 8: ends searched in [start+4, start+8]
    classes[5] = P
    classes[7] = S  # later, but a worse class than the paragraph at 5
    classes[10] = S
    classes[12] = S  # the latest sentence end in [9, 13] wins
    classes[3] = P  # before half the window: never an end
    assert split_windows(classes, 8, 0) == [(0, 5), (5, 12), (12, 20)]


def test_window_starts_snap_to_the_best_boundary_near_end_minus_overlap() -> None:
    classes = [P] + [W] * 29 + [P]  # 30 tokens; chunk 12, overlap 8: start near end - 8 ± 2
    classes[3] = S  # within 12 - 8 = 4 ± 2: the first window's successor starts there
    classes[18] = P  # ends the third window, and starts the last (19 - 1, within reach)
    assert split_windows(classes, 12, 8) == [
        (0, 12),
        (3, 15),
        (7, 18),
        (11, 23),
        (15, 27),
        (18, 30),
    ]


def test_windows_never_start_inside_a_word_when_a_word_boundary_exists() -> None:
    classes = [P] + [T] * 15 + [P]
    classes[2] = W  # the only word boundary
    assert split_windows(classes, 8, 1) == [(0, 8), (2, 10), (9, 16)]


def test_windows_invariants_on_random_classes() -> None:
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 400)
        chunk_tokens = rng.randint(1, 60)
        overlap = rng.randint(0, chunk_tokens - 1)
        classes = [P] + [rng.choice([X, T, T, T, W, W, W, W, L, S, P]) for _ in range(n - 1)] + [P]
        windows = split_windows(classes, chunk_tokens, overlap)
        assert windows[0][0] == 0 and windows[-1][1] == n
        for first, end in windows:
            assert 0 < end - first <= chunk_tokens
        for (s1, e1), (s2, e2) in itertools.pairwise(windows):
            assert s1 < s2 <= e1 < e2
            assert e1 - s1 >= (chunk_tokens + 1) // 2  # only the last window may be short
        assert len(windows) <= 2 * n // max(1, chunk_tokens - overlap) + 2


def test_full_windows_overlap_by_about_overlap() -> None:
    rng = random.Random(1)
    classes = [P] + [rng.choice([T, W, W, W, S]) for _ in range(4999)] + [P]
    windows = split_windows(classes, 100, 40)
    overlaps = [e1 - s2 for (_, e1), (s2, _) in itertools.pairwise(windows)]
    fills = [e - s for s, e in windows[:-1]]
    for (s, e), ov in zip(windows, overlaps, strict=False):
        wanted = 40 * (e - s) // 100
        assert abs(ov - wanted) <= max(1, wanted // 4)
    assert min(fills) >= 50 and max(fills) == 100


def test_sizes_are_validated() -> None:
    for chunk_tokens, overlap in [(0, 0), (10, 10), (10, -1)]:
        with pytest.raises(RagtuneError) as info:
            split_windows([P, P], chunk_tokens, overlap)
        assert info.value.hint
    with pytest.raises(RagtuneError, match="between 0 and chunk_tokens - 1 \\(7\\), got 8"):
        chunk_document(Document("d", "x", "s"), None, 8, 8)  # type: ignore[arg-type]


# --- chunk_document --------------------------------------------------------------------------


def test_chunks_break_at_paragraphs_without_overlap(word_tokenizer: Any) -> None:
    doc = Document("kb/a.txt", TEXT, "/x/a.txt", "Title", {"k": "v"})
    chunks = chunk_document(doc, word_tokenizer, chunk_tokens=20, overlap=0)
    check_chunks(doc, chunks, word_tokenizer, 20)
    assert [c.text for c in chunks] == PARAGRAPHS
    assert [(c.start, c.end) for c in chunks] == [(0, 76), (78, 156), (158, 237), (239, 305)]
    assert chunks[0] == Chunk(
        chunk_id="kb/a.txt#0",
        doc_id="kb/a.txt",
        index=0,
        text=PARAGRAPHS[0],
        start=0,
        end=76,
        source="/x/a.txt",
        title="Title",
        attributes={"k": "v"},
    )
    assert chunks[0].attributes is not doc.attributes


def test_chunks_overlap_starting_at_sentences(word_tokenizer: Any) -> None:
    doc = Document("a", TEXT, "s")
    chunks = chunk_document(doc, word_tokenizer, chunk_tokens=20, overlap=8)
    check_chunks(doc, chunks, word_tokenizer, 20)
    assert [c.text for c in chunks] == [
        PARAGRAPHS[0],
        "A second sentence follows here!\n\n" + PARAGRAPHS[1],
        "It gives them to the model.\n\nFine-tuning changes the weights of a pretrained model.",
        "the weights of a pretrained model. It uses backpropagation.",
        "It uses backpropagation.\n\n" + PARAGRAPHS[3],
    ]


def test_small_chunks_end_at_sentences_then_words(word_tokenizer: Any) -> None:
    doc = Document("a", TEXT, "s")
    chunks = chunk_document(doc, word_tokenizer, chunk_tokens=8, overlap=0)
    check_chunks(doc, chunks, word_tokenizer, 8)
    assert [c.text for c in chunks] == [
        "The quick brown fox jumps over the lazy",
        "dog. A second sentence follows here!",
        "Retrieval augmented generation retrieves passages.",
        "It gives them to the model.",
        "Fine-tuning changes the weights of a",
        "pretrained model. It uses backpropagation.",
        "Zorbland was founded in 1887 by Mira",
        "Quell. Its capital is Vetrin.",
    ]


@pytest.mark.parametrize(("chunk_tokens", "overlap"), [(8, 0), (8, 3), (12, 6), (20, 8), (64, 32)])
def test_tiny_embedder_chunks_satisfy_the_invariants(
    tokenizer: Any, chunk_tokens: int, overlap: int
) -> None:
    doc = Document("a", " \n" + TEXT * 3, "s")
    check_chunks(
        doc, chunk_document(doc, tokenizer, chunk_tokens, overlap), tokenizer, chunk_tokens
    )


def test_short_document_is_one_chunk(tokenizer: Any) -> None:
    doc = Document("d", "\n  Short text, one chunk.  \n", "s")
    chunks = chunk_document(doc, tokenizer)
    assert [(c.chunk_id, c.text, c.start, c.end) for c in chunks] == [
        ("d#0", "Short text, one chunk.", 3, 25)
    ]


def test_pathological_texts(tokenizer: Any) -> None:
    assert chunk_document(Document("d", "\n\n\n\n", "s"), tokenizer, 8, 2) == []
    giant = "x" * 5000  # longer than WordPiece's 100 characters: a single [UNK] token
    [chunk] = chunk_document(Document("d", giant, "s"), tokenizer, 8, 2)
    assert (chunk.start, chunk.end) == (0, 5000)
    dashed = "-".join("abcdefghij" * 20)  # 399 tokens, no whitespace at all
    doc = Document("d", dashed, "s")
    chunks = chunk_document(doc, tokenizer, chunk_tokens=16, overlap=4)
    check_chunks(doc, chunks, tokenizer, 16)
    assert [(c.start, c.end) for c in chunks[:3]] == [(0, 16), (12, 28), (24, 40)]
    assert len(chunks) == 33


def test_chunking_is_deterministic(tokenizer: Any) -> None:
    doc = Document("d", TEXT * 20, "s")
    assert chunk_document(doc, tokenizer, 30, 10) == chunk_document(doc, tokenizer, 30, 10)


def test_no_sequence_length_warning(tokenizer: Any, caplog: pytest.LogCaptureFixture) -> None:
    assert tokenizer.model_max_length == 32
    transformers.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            chunk_document(Document("d", TEXT * 5, "s"), tokenizer, 30, 10)
    finally:
        transformers.logging.disable_propagation()
    assert "sequence length" not in caplog.text


@pytest.mark.parametrize("segment_chars", [40, 97, 300, 1000])
@pytest.mark.parametrize(("chunk_tokens", "overlap"), [(8, 3), (20, 8), (64, 32)])
def test_segmented_chunking_equals_one_pass(
    tokenizer: Any, segment_chars: int, chunk_tokens: int, overlap: int
) -> None:
    rng = random.Random(segment_chars + chunk_tokens)
    text = "\n\n".join(rng.choice(PARAGRAPHS) + "  \n " * rng.randint(0, 1) for _ in range(60))
    doc = Document("d", text, "s")
    one_pass = list(iter_chunks(doc, tokenizer, chunk_tokens, overlap, segment_chars=10**9))
    assert list(iter_chunks(doc, tokenizer, chunk_tokens, overlap, segment_chars)) == one_pass
    check_chunks(doc, one_pass, tokenizer, chunk_tokens)


def test_segmented_chunking_tokenizes_bounded_pieces(tokenizer: Any) -> None:
    """A long text is never handed to the tokenizer whole: each call gets at most one
    segment, and the chunks come out before the text's end has been tokenized."""
    calls: list[int] = []

    class Counting:
        is_fast = True

        def __call__(self, text: str, **kwargs: Any) -> Any:
            calls.append(len(text))
            return tokenizer(text, **kwargs)

    doc = Document("d", TEXT * 400, "s")  # about 120,000 characters
    chunks = iter_chunks(doc, Counting(), 20, 8, segment_chars=2000)  # type: ignore[arg-type]
    first = next(chunks)
    assert first.start == 0 and len(calls) == 1
    rest = list(chunks)
    assert max(calls) <= 2000 and sum(calls) == len(doc.text)
    assert [first, *rest] == chunk_document(doc, tokenizer, 20, 8)


def test_slow_tokenizer_is_rejected() -> None:
    class Slow:
        is_fast = False

    with pytest.raises(RagtuneError, match="fast"):
        chunk_document(Document("d", "x", "s"), Slow(), 8, 2)  # type: ignore[arg-type]


# --- the real embedder's tokenizer -------------------------------------------------------------


@pytest.mark.integration
def test_minilm_defaults_on_a_long_article() -> None:
    from ragtune.models import default_embedder_path

    tokenizer = AutoTokenizer.from_pretrained(default_embedder_path())
    data = json.loads(shared_data("covidqa", "covidqa.json").read_text(encoding="utf-8"))
    contexts = [p["context"] for article in data["data"] for p in article["paragraphs"]]
    doc = Document("covid", max(contexts, key=len), "covidqa.json")
    started = time.perf_counter()
    chunks = chunk_document(doc, tokenizer)
    seconds = time.perf_counter() - started
    check_chunks(doc, chunks, tokenizer, 800)
    assert len(chunks) > len(doc.text) // 4000  # about 4 characters a token, stride ~400
    # Most chunks end at a paragraph or sentence end and start at a paragraph or sentence.
    ends = [
        c for c in chunks[:-1] if doc.text[c.end - 1] in ".!?" or doc.text[c.end :][:2] == "\n\n"
    ]
    assert len(ends) >= 0.9 * (len(chunks) - 1)
    assert seconds < 5, seconds
