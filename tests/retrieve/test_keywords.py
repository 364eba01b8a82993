"""The on-disk, segmented keyword index against the in-memory BM25Index it replaces."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from ragtune.errors import RagtuneError
from ragtune.retrieve import keywords
from ragtune.retrieve.bm25 import BM25Index
from ragtune.retrieve.keywords import KeywordIndex
from ragtune.retrieve.segment import Segment, segment_from_bm25
from ragtune.types import Chunk

WORDS = [
    "cat",
    "dog",
    "fish",
    "bird",
    "cow",
    "horse",
    "sheep",
    "goat",
    "duck",
    "frog",
    "mouse",
    "owl",
    "fox",
    "bear",
    "wolf",
]
QUERIES = ["cat", "dog fish", "bird cow horse", "owl owl fox", "zebra", "wolf bear sheep goat"]


def corpus(n: int, seed: int = 0) -> list[Chunk]:
    rng = random.Random(seed)
    chunks = []
    for i in range(n):
        text = " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))
        chunks.append(Chunk(f"d{i // 3}#{i % 3}", f"d{i // 3}", i % 3, text, 0, len(text)))
    return chunks


def reference(chunks: list[Chunk]) -> BM25Index:
    return BM25Index.build([c.text for c in chunks])


def assert_same_scores(index: KeywordIndex, ref: BM25Index) -> None:
    assert index.n_docs == ref.n_docs
    for q in QUERIES:
        got, want = index.scores(q), ref.scores(q)
        if len(set(q.split())) <= 2:  # two terms add up in either order to the same bits
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
        np.testing.assert_array_equal(index.top_k(q, 5)[0], ref.top_k(q, 5)[0])


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments of at most ~40 postings, so a 60-chunk corpus spans several of them."""
    monkeypatch.setattr(keywords, "SEGMENT_POSTINGS", 40)
    monkeypatch.setattr(keywords, "SMALL_SEGMENT", 20)
    monkeypatch.setattr(keywords, "MAX_SMALL_SEGMENTS", 2)


def test_segmented_index_scores_like_bm25index(tmp_path: Path, small_segments: None) -> None:
    chunks = corpus(60)
    index = KeywordIndex.empty(tmp_path / "segs")
    for start in range(0, 60, 7):  # ingest's groups
        index.add(chunks[start : start + 7])
    written = sorted(p.name for p in (tmp_path / "segs").iterdir())
    assert len(written) >= 3  # the buffer was written out as it filled, not held
    assert_same_scores(index, reference(chunks))
    index.save(tmp_path / "snap")
    loaded = KeywordIndex.load(tmp_path / "snap", tmp_path / "segs")
    assert all(s.folder is not None for s in loaded.segments)  # memory-mapped from disk
    assert isinstance(loaded.segments[0].arrays["rows"], np.memmap)
    assert_same_scores(loaded, reference(chunks))
    assert loaded.chunk_ids == [c.chunk_id for c in chunks]
    assert [loaded.chunk_id(r) for r in (0, 30, 59)] == ["d0#0", "d10#0", "d19#2"]


def test_removal_keeps_row_order_and_scores(tmp_path: Path, small_segments: None) -> None:
    chunks = corpus(60)
    index = KeywordIndex.empty(tmp_path / "segs")
    index.add(chunks)
    index.save(tmp_path / "a")
    index = KeywordIndex.load(tmp_path / "a", tmp_path / "segs")
    gone = {"d0", "d7", "d8", "d19"}
    index.remove_documents(gone)
    left = [c for c in chunks if c.doc_id not in gone]
    assert_same_scores(index, reference(left))
    mask = index.mask_of(["d1#0", "d9#2", "nope"])
    assert np.flatnonzero(mask).tolist() == [
        i for i, c in enumerate(left) if c.chunk_id in ("d1#0", "d9#2")
    ]
    index.save(tmp_path / "b")
    snap = json.loads((tmp_path / "b" / "index.json").read_text())
    assert any(s["deleted"] for s in snap["segments"])  # tombstones, segments untouched
    reloaded = KeywordIndex.load(tmp_path / "b", tmp_path / "segs")
    assert_same_scores(reloaded, reference(left))
    assert reloaded.chunk_ids == [c.chunk_id for c in left]
    more = corpus(9, seed=1)
    more = [Chunk("n" + c.chunk_id, "n" + c.doc_id, c.index, c.text, 0, 1) for c in more]
    reloaded.add(more)
    assert_same_scores(reloaded, reference(left + more))


def test_mostly_deleted_and_small_segments_are_merged(tmp_path: Path, small_segments: None) -> None:
    chunks = corpus(60)
    index = KeywordIndex.empty(tmp_path / "segs")
    for c in chunks:  # one chunk per ingest: many tiny segments
        index.add([c])
        index.save(tmp_path / "snap")
    assert len(index.segments) < 20  # merged as they came, not one per save
    gone = {f"d{i}" for i in range(20) if i % 4}  # 15 documents, 45 rows
    index.remove_documents(gone)
    index.save(tmp_path / "snap")
    left = [c for c in chunks if c.doc_id not in gone]
    loaded = KeywordIndex.load(tmp_path / "snap", tmp_path / "segs")
    assert sum(len(d) for d in loaded.deleted) < 45  # mostly deleted segments were rewritten
    assert_same_scores(loaded, reference(left))
    assert loaded.chunk_ids == [c.chunk_id for c in left]


def test_reads_the_format_1_index(tmp_path: Path) -> None:
    chunks = corpus(20)
    old = tmp_path / "keywords-old"
    reference(chunks).save(old / "bm25")
    rows = {
        "format_version": 1,
        "chunk_ids": [c.chunk_id for c in chunks],
        "doc_ids": [c.doc_id for c in chunks],
    }
    (old / "rows.json").write_text(json.dumps(rows))
    index = KeywordIndex.load(old, tmp_path / "segs")
    assert_same_scores(index, reference(chunks))
    index.remove_documents({"d2"})
    index.save(tmp_path / "new")  # the next write converts it
    loaded = KeywordIndex.load(tmp_path / "new", tmp_path / "segs")
    assert_same_scores(loaded, reference([c for c in chunks if c.doc_id != "d2"]))


def test_incomplete_segment_or_snapshot_is_reported(tmp_path: Path) -> None:
    index = KeywordIndex.empty(tmp_path / "segs")
    index.add(corpus(5))
    index.save(tmp_path / "snap")
    (seg,) = list((tmp_path / "segs").iterdir())
    tf = seg / "tf.npy"
    tf.write_bytes(tf.read_bytes()[:-4])  # truncated
    with pytest.raises(RagtuneError, match="missing or incomplete"):
        KeywordIndex.load(tmp_path / "snap", tmp_path / "segs")
    shutil.rmtree(seg)
    with pytest.raises(RagtuneError, match="missing or incomplete"):
        KeywordIndex.load(tmp_path / "snap", tmp_path / "segs")
    with pytest.raises(RagtuneError, match="missing or unreadable"):
        KeywordIndex.load(tmp_path / "nothing", tmp_path / "segs")


def test_empty_index_and_unicode_terms(tmp_path: Path) -> None:
    index = KeywordIndex.empty(tmp_path / "segs")
    assert index.n_docs == 0 and index.top_k("cat", 3)[0].tolist() == []
    index.save(tmp_path / "snap")
    assert KeywordIndex.load(tmp_path / "snap", tmp_path / "segs").n_docs == 0
    texts = ["Über naïve café", "café crème", "the a an"]  # the last has no terms at all
    chunks = [Chunk(f"u{i}#0", f"u{i}", 0, t, 0, len(t)) for i, t in enumerate(texts)]
    index.add(chunks)
    index.save(tmp_path / "snap")
    loaded = KeywordIndex.load(tmp_path / "snap", tmp_path / "segs")
    for q in ["café", "über crème", "naïve", "zzz"]:
        np.testing.assert_array_equal(loaded.scores(q), BM25Index.build(texts).scores(q))


def test_segment_terms_are_sorted_and_searchable() -> None:
    bm25 = BM25Index.build(["zeta alpha", "mid alpha alpha"])
    seg = segment_from_bm25(bm25, ["a#0", "b#0"], ["a", "b"])
    assert seg.terms() == ["alpha", "mid", "zeta"]
    rows, tf = seg.postings("alpha")
    assert rows.tolist() == [0, 1] and tf.tolist() == [1.0, 2.0]
    assert seg.postings("beta")[0].tolist() == []
    assert isinstance(seg, Segment) and seg.folder is None


@pytest.mark.integration
def test_scifact_segmented_index_matches_bm25index_and_bm25s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SciFact in segments of 2^16 postings (several), against the whole-matrix index and
    bm25s (lucene, k1 = 1.5, b = 0.75, en stop words, PyStemmer)."""
    from tests.conftest import shared_data
    from tests.retrieve.beir import bm25s_top10, load_beir

    monkeypatch.setattr(keywords, "SEGMENT_POSTINGS", 1 << 16)
    data = load_beir(shared_data("scifact"))
    chunks = [
        Chunk(f"{d}#0", d, 0, t, 0, len(t))
        for d, t in zip(data.doc_ids, data.doc_texts, strict=True)
    ]
    index = KeywordIndex.empty(tmp_path / "segs")
    for start in range(0, len(chunks), 1024):
        index.add(chunks[start : start + 1024])
    index.save(tmp_path / "snap")
    index = KeywordIndex.load(tmp_path / "snap", tmp_path / "segs")
    assert len(index.segments) >= 4
    whole = BM25Index.build(data.doc_texts)
    qids = sorted(data.queries)[:100]
    ref_rows, ref_scores = bm25s_top10(data.doc_texts, [data.queries[q] for q in qids])
    same_as_bm25s = 0
    for i, qid in enumerate(qids):
        query = data.queries[qid]
        np.testing.assert_allclose(index.scores(query), whole.scores(query), rtol=1e-12, atol=0)
        rows, scores = index.top_k(query, k=10)
        np.testing.assert_array_equal(rows, whole.top_k(query, k=10)[0])
        np.testing.assert_allclose(scores, ref_scores[i][: len(scores)], rtol=1e-5)
        same_as_bm25s += rows.tolist() == ref_rows[i].tolist()
    assert same_as_bm25s >= 95  # ties in float32 may swap a pair, as for BM25Index
