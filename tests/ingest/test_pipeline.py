"""Streaming ingest: a big file and many files go through in bounded groups."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ragtune.ingest import chunking, pipeline
from ragtune.ingest.pipeline import _ingest, ingest
from ragtune.retrieve.kb import KnowledgeBase

SENTENCE = "Zorbland was founded in 1887 by Mira Quell. Its capital is Vetrin.\n\n"


def settings(embedder: Path) -> dict[str, object]:
    return {
        "embedder": str(embedder),
        "backend": "torch",
        "chunk_tokens": 16,
        "chunk_overlap": 4,
        "max_file_mb": None,
        "batch_size": None,
    }


def test_big_file_is_embedded_in_bounded_groups(
    tmp_path: Path, tiny_embedder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "EMBED_GROUP", 8)
    monkeypatch.setattr(chunking, "SEGMENT_CHARS", 500)
    monkeypatch.setattr(pipeline, "BIG_DOCUMENT_CHARS", 1000)
    big = tmp_path / "big.txt"
    big.write_text(SENTENCE * 300)  # about 20,000 characters, hundreds of chunks
    calls: list[tuple[str, int, int]] = []
    report, writer = _ingest(
        [big], "t", settings(tiny_embedder), None, False, False, "cpu",
        lambda *a: calls.append(a),
    )  # fmt: skip
    assert writer is not None
    assert report.chunks_added == report.chunks > 100
    assert writer.max_group_chunks == 8  # never more than one group in memory
    # The big document reports its own progress, in characters, up to its length.
    doc_calls = [c for c in calls if c[0] == "doc:big.txt"]
    assert len(doc_calls) > 10 and sum(c[1] for c in doc_calls) == len(SENTENCE * 300)
    embed_calls = [c for c in calls if c[0] == "embed"]
    assert sum(c[1] for c in embed_calls) == report.chunks
    assert ("read", 1, 1) in calls
    # The chunks are those of chunking the whole text in one pass.
    kb = KnowledgeBase.open("t")
    doc = kb.document("big.txt")
    assert doc is not None and doc.text == SENTENCE * 300
    monkeypatch.setattr(chunking, "SEGMENT_CHARS", 10**9)
    one_pass = chunking.chunk_document(doc, writer.tokenizer, 16, 4)
    assert kb.store.get_chunks([c.chunk_id for c in one_pass]) == one_pass


def test_many_files_are_grouped_and_reingest_replaces_across_groups(
    tmp_path: Path, tiny_embedder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "EMBED_GROUP", 5)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(23):
        (docs / f"d{i:02d}.txt").write_text(f"Document {i}. " + SENTENCE)
    report, writer = _ingest(
        [docs], "t", settings(tiny_embedder), None, False, False, "cpu", None
    )  # fmt: skip
    assert writer is not None and writer.max_group_chunks <= 5 + 2  # a group ends after a doc
    assert (report.documents, len(report.added)) == (23, 23)
    chunks = report.chunks
    for i in (3, 17):
        (docs / f"d{i:02d}.txt").write_text(f"Changed {i}. " + SENTENCE)
    again = ingest([docs], "t", embedder=str(tiny_embedder), backend="torch")
    assert sorted(again.updated) == ["docs/d03.txt", "docs/d17.txt"]
    assert (again.unchanged, again.documents, again.chunks) == (21, 23, chunks)
    kb = KnowledgeBase.open("t")
    hits = kb.search("Changed", k=5, mode="bm25")
    assert sorted(h.chunk.doc_id for h in hits) == ["docs/d03.txt", "docs/d17.txt"]


def test_unlistable_folder_is_reported_as_skipped(
    tmp_path: Path, tiny_embedder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs"
    (docs / "locked").mkdir(parents=True)
    (docs / "a.txt").write_text(SENTENCE)
    real_scandir = os.scandir

    def scandir(path: object) -> object:  # os.walk lists folders with os.scandir
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    report = ingest([docs], "t", embedder=str(tiny_embedder), backend="torch")
    assert report.skipped == [(str(docs / "locked"), "cannot list folder: Permission denied")]
    assert report.added == ["docs/a.txt"]
