"""Split documents into overlapping chunks measured in the embedder's tokens.

The defaults, 800-token chunks overlapping by 400, are OpenAI file_search's. Windows are
cut at the best text boundary available, in this order of preference::

    paragraph (blank line) > sentence end > line break > whitespace > between tokens

A window's end is the latest boundary of the best class found in its second half (never
before ``ceil(chunk_tokens / 2)`` tokens), so a chunk is at least half full unless it is
the document's last. The next window starts at the boundary of the best class nearest to
``end - overlap`` tokens, within a quarter of the overlap either side (further only to
avoid starting inside a word), so chunks tend to start at a paragraph or sentence. The
overlap scales with the window's length (a half-full chunk overlaps the next by half of
``overlap``), which keeps the stride, and so the number of chunks, bounded.

The boundary logic works on token indices only (``boundary_classes`` then
``split_windows``), so it is tested without a tokenizer and runs in linear time.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING

from ragtune.errors import RagtuneError
from ragtune.types import Chunk, Document

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class Boundary(IntEnum):
    """How good a place to cut the text is; higher is better."""

    INSIDE_CHAR = 0  # two tokens share a character (byte-level BPE): cut only as a last resort
    TOKEN = 1  # between two tokens with no whitespace between them
    SPACE = 2
    LINE = 3
    SENTENCE = 4  # after . ! ? (or a closing quote/bracket after one) and whitespace
    PARAGRAPH = 5  # whitespace holding a blank line; also the start and end of the text


# Whitespace runs other than a single space: two or more characters, or one that is not " ".
_SPECIAL_RUN = re.compile(r"(?=\s)(?:\s{2,}|[^\S ])")
_SENTENCE_END = frozenset(".!?…")
_CLOSERS = frozenset("\"')]}»”’")
_SENTENCE_CHARS = _SENTENCE_END | _CLOSERS
_LAST_RUN_START = re.compile(r"(?s:.*)\S(?=\s)")  # greedy: matches up to the last such place


SEGMENT_CHARS = 1 << 18  # text tokenized per call: bounds memory whatever the document size


def chunk_document(
    doc: Document,
    tokenizer: PreTrainedTokenizerBase,
    chunk_tokens: int = 800,
    overlap: int = 400,
) -> list[Chunk]:
    """Split ``doc.text`` into chunks of at most ``chunk_tokens`` tokens of ``tokenizer``.

    ``tokenizer`` is a Hugging Face *fast* tokenizer (the embedder's); it is used for
    counting and offsets only, without special tokens or truncation. Every chunk satisfies
    ``chunk.text == doc.text[chunk.start:chunk.end]`` and has no surrounding whitespace;
    ids are ``"<doc_id>#<index>"``. A text with no tokens gives no chunks.
    """
    return list(iter_chunks(doc, tokenizer, chunk_tokens, overlap))


def iter_chunks(
    doc: Document,
    tokenizer: PreTrainedTokenizerBase,
    chunk_tokens: int = 800,
    overlap: int = 400,
    segment_chars: int | None = None,
) -> Iterator[Chunk]:
    """The chunks of :func:`chunk_document`, one at a time, in bounded memory.

    The text is tokenized ``segment_chars`` characters at a time, each segment ending
    where a whitespace run starts, and the windows are chosen exactly as
    :func:`split_windows` does (it only ever looks ``chunk_tokens`` tokens ahead), so a
    document of any size needs memory for one segment's tokens, not the whole text's.
    For tokenizers that split at whitespace (WordPiece, byte-level BPE) the chunks equal
    those of one pass over the whole text; a text shorter than a segment is one pass.
    """
    check_sizes(chunk_tokens, overlap)
    if not getattr(tokenizer, "is_fast", False):
        raise RagtuneError(
            "Chunking needs a fast (Rust) tokenizer for character offsets",
            "use an embedder folder that has a tokenizer.json",
        )
    segment_chars = segment_chars or SEGMENT_CHARS
    text = doc.text
    offsets: list[tuple[int, int]] = []  # buffered tokens, absolute character offsets
    cls = bytearray()  # cls[i]: class of cutting before buffered token i
    pos = 0  # text tokenized so far
    last: tuple[int, int] | None = None  # the last token tokenized
    start, prev_end, index = 0, 0, 0  # window start and previous end, buffer-relative

    while True:
        while pos < len(text) and len(offsets) - start <= chunk_tokens:
            cut = _segment_end(text, pos, segment_chars)
            encoding = tokenizer(
                text[pos:cut],
                add_special_tokens=False,
                return_offsets_mapping=True,
                return_attention_mask=False,
                return_token_type_ids=False,
                truncation=False,
                verbose=False,  # no "longer than the maximum sequence length" warning
            )
            new = [(s + pos, e + pos) for s, e in encoding["offset_mapping"]]
            cls.extend(_cut_classes(text, last, new, pos, cut))
            offsets.extend(new)
            last = offsets[-1] if offsets else last
            pos = cut
        final = len(offsets) - start <= chunk_tokens  # the rest fits in one window
        if final:
            first, stop = start, len(offsets)
        else:
            lo = max(start + (chunk_tokens + 1) // 2, prev_end + 1)
            first, stop = start, _latest_best(cls, lo, start + chunk_tokens)
            start, prev_end = _next_start(cls, start, stop, chunk_tokens, overlap), stop
        if stop > first:
            span = _strip_span(text, offsets[first][0], offsets[stop - 1][1])
            if span[0] != span[1]:
                yield _chunk(doc, index, *span)
                index += 1
        if final:
            return
        if start > len(offsets) // 2:  # drop tokens no window can reach any more
            del offsets[:start], cls[:start]
            prev_end -= start
            start = 0


def _chunk(doc: Document, index: int, start: int, end: int) -> Chunk:
    return Chunk(
        chunk_id=f"{doc.doc_id}#{index}",
        doc_id=doc.doc_id,
        index=index,
        text=doc.text[start:end],
        start=start,
        end=end,
        source=doc.source,
        title=doc.title,
        attributes=dict(doc.attributes),
    )


def _segment_end(text: str, pos: int, size: int) -> int:
    """Where the segment starting at ``pos`` ends: the text's end, or the start of the last
    whitespace run in the second half of ``[pos, pos + size)`` (a hard cut if none)."""
    if len(text) - pos <= size:
        return len(text)
    hi = pos + size
    m = _LAST_RUN_START.search(text, pos + size // 2, hi)
    return m.end() if m else hi


def check_sizes(chunk_tokens: int, overlap: int) -> None:
    """Raise RagtuneError unless ``chunk_tokens >= 1`` and ``0 <= overlap < chunk_tokens``."""
    if chunk_tokens < 1:
        raise RagtuneError(
            f"chunk_tokens must be at least 1, got {chunk_tokens}", "e.g. chunk_tokens = 800"
        )
    if not 0 <= overlap < chunk_tokens:
        raise RagtuneError(
            f"chunk overlap must be between 0 and chunk_tokens - 1 ({chunk_tokens - 1}),"
            f" got {overlap}",
            "e.g. chunk_tokens = 800 with chunk_overlap = 400",
        )


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` narrowed so that ``text[start:end]`` has no surrounding whitespace."""
    piece = text[start:end]
    stripped = piece.lstrip()
    start += len(piece) - len(stripped)
    return start, start + len(stripped.rstrip())


def boundary_classes(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """The ``Boundary`` class of cutting ``text`` before each token, for tokens with
    character ``offsets``: ``n + 1`` values for ``n`` tokens, the first and last (the
    text's start and end) ``PARAGRAPH``.

    A cut before token ``i`` is classified by the whitespace run that touches the start
    of token ``i`` (the gap between tokens, or whitespace a token carries, as byte-level
    tokenizers do), so it works whether or not the tokenizer keeps whitespace in tokens.
    A sentence end is ``. ! ? …``, optionally followed by closing quotes or brackets,
    then whitespace, then anything but a lowercase letter (so "e.g. this" is not one).
    """
    if not offsets:
        return [int(Boundary.PARAGRAPH)]
    inner = _cut_classes(text, None, offsets, 0, len(text))[1:]
    return [int(Boundary.PARAGRAPH), *inner, int(Boundary.PARAGRAPH)]


def _cut_classes(
    text: str,
    before: tuple[int, int] | None,
    offsets: Sequence[tuple[int, int]],
    lo: int,
    hi: int,
) -> list[int]:
    """The class of cutting before each of ``offsets`` (tokens lying in ``text[lo:hi]``);
    ``before`` is the token preceding the first one (None at the text's start, a
    PARAGRAPH cut). A whitespace run touching a token start lies within ``[lo, hi)``."""
    # Runs other than a single space are few (line breaks, indents): classify them up
    # front; single spaces, most gaps, take the fast path below.
    special = [(m.start(), m.end()) for m in _SPECIAL_RUN.finditer(text, lo, hi)]
    special_starts = [start for start, _ in special]
    special_classes = [_run_class(text, start, end) for start, end in special]

    def run_class_at(pos: int) -> int:
        """The class of the whitespace run that contains or touches ``pos``; TOKEN if none."""
        j = bisect.bisect_right(special_starts, pos) - 1  # the last special run at or before
        if j >= 0 and special[j][1] >= pos:
            return special_classes[j]
        if pos > 0 and text[pos - 1] == " ":
            return _space_class(text, pos - 1)
        if pos < len(text) and text[pos] == " ":
            return _space_class(text, pos)
        return Boundary.TOKEN

    classes = [int(Boundary.PARAGRAPH)] * len(offsets)
    for i in range(len(offsets)):
        if i == 0 and before is None:
            continue
        prev_end, start = (offsets[i - 1] if i else before)[1], offsets[i][0]  # type: ignore[index]
        if prev_end > start:
            classes[i] = Boundary.INSIDE_CHAR
        elif (
            0 < prev_end == start - 1 < len(text) - 1
            and text[prev_end] == " "
            and not text[prev_end - 1].isspace()
            and not text[start].isspace()
        ):  # the common case: exactly one space between two tokens
            if text[prev_end - 1] in _SENTENCE_CHARS:
                classes[i] = _space_class(text, prev_end)
            else:
                classes[i] = Boundary.SPACE
        else:
            classes[i] = run_class_at(start)
    return classes


def _space_class(text: str, pos: int) -> int:
    """The class of a single space ``text[pos]`` (SENTENCE or SPACE)."""
    return _run_class(text, pos, pos + 1)


def _run_class(text: str, start: int, end: int) -> int:
    """The class of a whitespace run ``text[start:end]`` as a place to cut."""
    newlines = text.count("\n", start, end)
    if newlines >= 2:
        return Boundary.PARAGRAPH
    if _ends_sentence(text, start) and (end == len(text) or not text[end].islower()):
        return Boundary.SENTENCE
    return Boundary.LINE if newlines else Boundary.SPACE


def _ends_sentence(text: str, pos: int) -> bool:
    """Whether ``text[:pos]`` ends with sentence-final punctuation (closers allowed after)."""
    i = pos - 1
    while i >= 0 and pos - i <= 3 and text[i] in _CLOSERS:
        i -= 1
    return i >= 0 and text[i] in _SENTENCE_END


def split_windows(classes: Sequence[int], chunk_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Token windows ``[(first, end), ...]`` covering all ``len(classes) - 1`` tokens.

    ``classes[i]`` is the ``Boundary`` class of cutting before token ``i``. Each window has
    at most ``chunk_tokens`` tokens; each ends after the previous one ends and starts after
    the previous one starts; the last ends at the last token. See the module docstring for
    how ends and starts are chosen.
    """
    check_sizes(chunk_tokens, overlap)
    n = len(classes) - 1
    if n <= 0:
        return []
    cls = bytes(classes)  # so the searches below run in C
    windows: list[tuple[int, int]] = []
    start, prev_end = 0, 0
    while n - start > chunk_tokens:
        lo = max(start + (chunk_tokens + 1) // 2, prev_end + 1)
        end = _latest_best(cls, lo, start + chunk_tokens)
        windows.append((start, end))
        start, prev_end = _next_start(cls, start, end, chunk_tokens, overlap), end
    windows.append((start, n))
    return windows


def _latest_best(cls: bytes | bytearray, lo: int, hi: int) -> int:
    """The latest position in ``[lo, hi]`` with the highest class there."""
    best = max(cls[lo : hi + 1])
    return cls.rfind(bytes([best]), lo, hi + 1)


def _next_start(
    cls: bytes | bytearray, start: int, end: int, chunk_tokens: int, overlap: int
) -> int:
    """Where the window after ``[start, end)`` starts: the best boundary nearest to
    ``end - overlap'`` (``overlap`` scaled by the window's fill), looking a quarter of
    ``overlap'`` either side, or the whole window when that finds no word boundary."""
    wanted = overlap * (end - start) // chunk_tokens  # < end - start, so progress is made
    if wanted == 0:
        return end
    target = end - wanted
    reach = max(1, wanted // 4)
    lo, hi = max(start + 1, target - reach), min(end - 1, target + reach)
    if max(cls[lo : hi + 1]) < Boundary.SPACE:  # do not start inside a word if avoidable
        lo, hi = start + 1, end - 1
    return _nearest_best(cls, lo, hi, target)


def _nearest_best(cls: bytes | bytearray, lo: int, hi: int, target: int) -> int:
    """The position in ``[lo, hi]`` with the highest class there that is nearest to
    ``target`` (the earlier one on a tie)."""
    best = bytes([max(cls[lo : hi + 1])])
    before = cls.rfind(best, lo, target + 1)
    after = cls.find(best, target, hi + 1)
    if before < 0:
        return after
    if after < 0 or target - before <= after - target:
        return before
    return after
