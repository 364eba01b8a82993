"""Knowledge base: ingest -> store -> search, incremental re-ingest, filters, crash safety."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ragtune.errors import RagtuneError
from ragtune.ingest.pipeline import ingest
from ragtune.retrieve.kb import KnowledgeBase
from ragtune.retrieve.store import Filter, filter_sql, parse_filters


def write_docs(root: Path) -> Path:
    docs = root / "docs"
    (docs / "team_a").mkdir(parents=True)
    (docs / "zorb.md").write_text(
        "# Zorbland\n\nZorbland was founded in 1887 by Mira Quell.\n\nIts capital is Vetrin.\n"
    )
    (docs / "sea.txt").write_text("The sea is blue and the waves are loud.\n")
    (docs / "team_a" / "grass.txt").write_text("Grass is green in the spring.\n")
    return docs


def test_ingest_then_search_each_mode(tmp_path: Path, tiny_embedder: Path) -> None:
    docs = write_docs(tmp_path)
    report = ingest([docs], "t", embedder=str(tiny_embedder), backend="torch")
    assert sorted(report.added) == ["docs/sea.txt", "docs/team_a/grass.txt", "docs/zorb.md"]
    assert (report.documents, report.chunks, report.chunks_added) == (3, 3, 3)
    kb = KnowledgeBase.open("t")
    hits = kb.search("founded Zorbland", k=2, mode="bm25")
    assert [h.chunk.doc_id for h in hits] == ["docs/zorb.md"]  # BM25: only matching terms
    assert hits[0].rank == 1 and set(hits[0].scores) == {"bm25"}
    dense = kb.search("founded Zorbland", k=3, mode="dense")
    assert len(dense) == 3 and set(dense[0].scores) == {"dense"}
    rrf = kb.search("founded Zorbland", k=3, mode="hybrid", fusion="rrf")
    assert rrf[0].chunk.doc_id == "docs/zorb.md"  # first in BM25, so first after fusion
    dense_rank = next(h.rank for h in dense if h.chunk.doc_id == "docs/zorb.md")
    assert rrf[0].scores["rrf"] == pytest.approx(1 / 61 + 1 / (60 + dense_rank))
    hybrid = kb.search("founded Zorbland", k=3, mode="hybrid")  # default: convex
    top = hybrid[0]
    assert top.chunk.doc_id == "docs/zorb.md"
    # BM25 min-max over its single candidate is 1; dense min-max over the three candidates:
    d = {h.chunk.chunk_id: h.score for h in dense}
    lo, hi = min(d.values()), max(d.values())
    assert top.scores["convex"] == pytest.approx(1 + (d[top.chunk.chunk_id] - lo) / (hi - lo))
    chunk = hybrid[0].chunk
    doc = kb.document("docs/zorb.md")
    assert doc is not None and doc.text[chunk.start : chunk.end] == chunk.text
    assert chunk.title == "Zorbland"


def test_reingest_is_incremental(tmp_path: Path, tiny_embedder: Path) -> None:
    docs = write_docs(tmp_path)
    ingest([docs], "t", embedder=str(tiny_embedder), backend="torch")
    again = ingest([docs], "t")
    assert (again.added, again.updated, again.unchanged, again.chunks_added) == ([], [], 3, 0)
    (docs / "sea.txt").write_text("The sea is green today.\n")
    (docs / "team_a" / "grass.txt").unlink()
    changed = ingest([docs], "t")
    assert changed.updated == ["docs/sea.txt"] and changed.chunks_added == 1
    assert changed.missing == ["docs/team_a/grass.txt"] and changed.removed == []
    assert KnowledgeBase.open("t").count() == (3, 3)
    pruned = ingest([docs], "t", prune=True)
    assert pruned.removed == ["docs/team_a/grass.txt"] and pruned.documents == 2
    kb = KnowledgeBase.open("t")
    assert [h.chunk.text for h in kb.search("sea", k=1, mode="bm25")] == ["The sea is green today."]
    assert kb.search("grass", k=5, mode="bm25") == []


def test_prune_only_touches_the_given_paths(tmp_path: Path, tiny_embedder: Path) -> None:
    docs = write_docs(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("Another folder entirely.\n")
    ingest([docs, other], "t", embedder=str(tiny_embedder), backend="torch")
    (docs / "sea.txt").unlink()
    report = ingest([docs], "t", prune=True)
    assert report.removed == ["docs/sea.txt"]
    assert KnowledgeBase.open("t").document("other/x.txt") is not None


def test_bad_files_are_skipped_with_a_reason(tmp_path: Path, tiny_embedder: Path) -> None:
    docs = write_docs(tmp_path)
    (docs / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    (docs / "empty.md").write_text("")
    (docs / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    report = ingest([docs], "t", embedder=str(tiny_embedder), backend="torch")
    reasons = {Path(p).name: r for p, r in report.skipped}
    assert set(reasons) == {"blob.txt", "empty.md", "latin.txt"}
    assert len(report.added) == 3


def test_settings_of_an_existing_kb_cannot_change_silently(
    tmp_path: Path, tiny_embedder: Path
) -> None:
    docs = write_docs(tmp_path)
    ingest(
        [docs], "t", embedder=str(tiny_embedder), backend="torch", chunk_tokens=50, chunk_overlap=10
    )
    with pytest.raises(RagtuneError, match="chunk_tokens=50"):
        ingest([docs], "t", chunk_tokens=60)
    rebuilt = ingest(
        [docs],
        "t",
        embedder=str(tiny_embedder),
        backend="torch",
        chunk_tokens=60,
        chunk_overlap=10,
        rebuild=True,
    )
    assert len(rebuilt.added) == 3
    assert KnowledgeBase.open("t").manifest["config"]["chunk_tokens"] == 60


def test_missing_kb_says_how_to_create_it() -> None:
    with pytest.raises(RagtuneError) as e:
        KnowledgeBase.open("nope")
    assert "ragtune ingest PATH --kb nope" in str(e.value)


def test_filters(tmp_path: Path, tiny_embedder: Path) -> None:
    docs = write_docs(tmp_path)
    ingest(
        [docs / "team_a"],
        "t",
        embedder=str(tiny_embedder),
        backend="torch",
        attributes={"team": "a"},
    )
    ingest([docs / "sea.txt", docs / "zorb.md"], "t", attributes={"team": "b"})
    kb = KnowledgeBase.open("t")
    for mode in ("bm25", "dense", "hybrid"):
        team_a = kb.search("grass sea Zorbland", k=5, mode=mode, where=parse_filters(["team=a"]))
        assert [h.chunk.doc_id for h in team_a] == ["team_a/grass.txt"]
        by_source = kb.search(
            "grass sea Zorbland", k=5, mode=mode, where=Filter(sources=(str(docs / "team_a"),))
        )
        assert [h.chunk.doc_id for h in by_source] == ["team_a/grass.txt"]
        by_id = kb.search("sea Zorbland", k=5, mode=mode, where=Filter(doc_ids=("sea.txt",)))
        assert [h.chunk.doc_id for h in by_id] == ["sea.txt"]
    assert filter_sql(Filter(attributes={"team": ("a", "b")})) == (
        "array_has_any(attributes, ['team=a', 'team=b'])"
    )
    with pytest.raises(RagtuneError, match="Bad filter"):
        parse_filters(["nokey"])


CRASH = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import ragtune.ingest.pipeline as pipeline

    def die(*args, **kwargs):  # the store has written; the manifest has not
        os.kill(os.getpid(), signal.SIGKILL)

    import ragtune.retrieve.kb as kb
    kb.write_json_atomic = die
    pipeline.ingest([Path(sys.argv[1])], "t")
    """
)


def test_kill_9_mid_ingest_leaves_the_previous_index_usable(
    tmp_path: Path, tiny_embedder: Path
) -> None:
    docs = write_docs(tmp_path)
    ingest([docs], "t", embedder=str(tiny_embedder), backend="torch")
    before = json.loads((KnowledgeBase.open("t").folder / "manifest.json").read_text())
    (docs / "sea.txt").write_text("The sea is purple now.\n")
    (docs / "new.txt").write_text("A brand new document about volcanoes.\n")
    proc = subprocess.run([sys.executable, "-c", CRASH, str(docs)], capture_output=True)
    assert proc.returncode == -9
    kb = KnowledgeBase.open("t")
    assert kb.manifest == before
    assert kb.count() == (3, 3)
    assert [h.chunk.text for h in kb.search("sea", k=1, mode="bm25")] == [
        "The sea is blue and the waves are loud."
    ]
    assert kb.search("volcanoes", k=3, mode="bm25") == []
    report = ingest([docs], "t")  # the next writer rolls back the orphaned writes and redoes them
    assert report.updated == ["docs/sea.txt"] and report.added == ["docs/new.txt"]
    kb = KnowledgeBase.open("t")
    assert kb.count() == (4, 4)
    assert [h.chunk.text for h in kb.search("sea", k=1, mode="bm25")] == ["The sea is purple now."]


def test_keyword_index_is_written_in_segments_during_ingest(
    tmp_path: Path, tiny_embedder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    import ragtune.ingest.pipeline as pipeline
    from ragtune.retrieve import keywords

    monkeypatch.setattr(pipeline, "EMBED_GROUP", 4)  # chunks per store append
    monkeypatch.setattr(keywords, "SEGMENT_POSTINGS", 12)  # postings buffered in memory
    monkeypatch.setattr(keywords, "SMALL_SEGMENT", 6)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(24):
        (docs / f"f{i:02d}.txt").write_text(f"Animal number{i} eats plant{i} and grain{i}.\n")
    ingest([docs], "t", embedder=str(tiny_embedder), backend="torch")
    kb = KnowledgeBase.open("t")
    segments = kb.folder / keywords.SEGMENTS_DIR
    assert len(kb.store.keywords.segments) >= 4  # written as the buffer filled
    assert [h.chunk.doc_id for h in kb.search("plant17", k=3, mode="bm25")] == ["docs/f17.txt"]
    (docs / "f17.txt").write_text("Animal number17 now eats only stones.\n")
    (docs / "f03.txt").unlink()
    ingest([docs], "t", prune=True)
    kb = KnowledgeBase.open("t")
    assert kb.search("plant17", k=3, mode="bm25") == []
    assert [h.chunk.doc_id for h in kb.search("stones", k=3, mode="bm25")] == ["docs/f17.txt"]
    assert kb.search("grain3", k=3, mode="bm25") == []
    assert kb.count() == (23, 23) and kb.store.keywords.n_docs == 23
    kb.store.cleanup(kb.manifest["store"], grace=timedelta(0))
    referenced = {s.name for s in kb.store.keywords.segments}
    assert {p.name for p in segments.iterdir()} == referenced
