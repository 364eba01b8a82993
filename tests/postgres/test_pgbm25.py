"""PostgreSQL BM25 on postings (ragtune.retrieve.pgbm25) ranks and scores exactly as the embedded
BM25 index on the same chunks: Zipf-distributed texts (common and rare terms, so the MaxScore
split prunes and sometimes has to retry), repeated query terms, a term repeated more often
than a tsvector keeps positions, filters, deletions; and migration 5 backfills the postings of
knowledge bases written before it."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import psycopg
import pytest

from ragtune.jobs.migrations import migrate
from ragtune.retrieve import pgbm25
from ragtune.retrieve.bm25 import BM25Index
from ragtune.retrieve.pgstore import PgStore
from ragtune.retrieve.store import Filter, index_text
from ragtune.types import Chunk, Document

pytestmark = pytest.mark.postgres

WORDS = [f"w{i}x" for i in range(120)]


def corpus(n: int = 300, seed: int = 3) -> list[Chunk]:
    rng = random.Random(seed)
    zipf = [1 / (r + 1) ** 1.1 for r in range(len(WORDS))]
    chunks = []
    for i in range(n):
        words = rng.choices(WORDS, zipf, k=rng.randint(3, 30))
        if i == 7:
            words += ["uniqx"] * 300  # beyond the 256 positions a tsvector keeps
        folder = "a" if i % 3 else "b"
        title = "w5x w118x" if i % 11 == 0 else ""
        text = " ".join(words)
        chunks.append(Chunk(f"{folder}/d{i}#0", f"{folder}/d{i}", 0, text, 0, len(text), "", title))
    return chunks


def queries(n: int = 25, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    out = ["uniqx", "w0x w0x w1x", "w118x w5x", "w0x", "w1x w2x w3x w4x w117x"]
    for _ in range(n):
        out.append(" ".join(rng.choices(WORDS[:40] + WORDS, k=rng.randint(1, 4))))
    return out


def store_with(url: str, chunks: list[Chunk]) -> PgStore:
    migrate(url)
    store = PgStore(url, "kb", 4, exact=True)
    docs = [Document(c.doc_id, c.text, c.source, c.title) for c in chunks]
    vectors = np.random.default_rng(0).normal(size=(len(chunks), 4)).astype(np.float32)
    for s in range(0, len(chunks), 100):  # several batches: df accumulates across them
        store.add(docs[s : s + 100], chunks[s : s + 100], vectors[s : s + 100])
    store.commit()
    return store


def assert_same_as_embedded(store: PgStore, live: list[Chunk], where: Filter | None = None) -> None:
    ref = BM25Index.build([index_text(c) for c in live])
    mask = None if where is None else np.array([where.matches(c) for c in live])
    for q in queries():
        for k in (1, 5, 20):
            rows, scores = ref.top_k(q, k, mask=mask)
            got = store.keyword_search(q, k, where)
            assert [c.chunk_id for c, _ in got] == [live[r].chunk_id for r in rows], (q, k)
            np.testing.assert_allclose([s for _, s in got], scores, rtol=1e-6)


def test_postings_bm25_equals_embedded_with_filters_and_deletes(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bounds: list[bool] = []
    original = pgbm25.bound_holds

    def recording(rest_weight: float, theta: float) -> bool:
        bounds.append(original(rest_weight, theta))
        return bounds[-1]

    monkeypatch.setattr(pgbm25, "bound_holds", recording)
    monkeypatch.setattr(pgbm25, "worth_probing", lambda *a: True)  # prune whenever it can
    chunks = corpus()
    store = store_with(pg_url, chunks)
    hit = store.keyword_search("uniqx", 1)
    assert hit[0][0].chunk_id == chunks[7].chunk_id  # tf 301, not the 256 of a tsvector
    assert_same_as_embedded(store, chunks)
    assert True in bounds and False in bounds  # pruned searches and retried splits both ran
    assert_same_as_embedded(store, chunks, Filter(doc_ids=("b",)))
    gone = {c.doc_id for c in chunks[::4]} | {chunks[7].doc_id}
    store.delete_documents(sorted(gone))
    assert_same_as_embedded(store, chunks)  # staged: readers still see every chunk
    store.commit()
    live = [c for c in chunks if c.doc_id not in gone]
    assert_same_as_embedded(store, live)
    assert_same_as_embedded(store, live, Filter(doc_ids=("a",)))
    assert store.keyword_search("uniqx", 5) == []  # df 0 after the delete


def test_first_split_and_bound() -> None:
    assert pgbm25.first_split([3.0, 2.0, 1.0], [4, 50, 900], 10) == 2
    assert pgbm25.first_split([3.0, 2.0], [1, 2], 10) == 2
    assert pgbm25.bound_holds(1.0, 1.5) and not pgbm25.bound_holds(1.0, 1.0)
    assert not pgbm25.bound_holds(0.0, 0.0)  # fewer than k candidates proves nothing
    assert pgbm25.worth_probing(10, 1.0, 1.0, [90, 50]) and not pgbm25.worth_probing(
        100, 1.0, 2.0, [90, 50]
    )
    assert pgbm25.worth_probing(100, 0.01, 2.0, [90, 50])  # light other terms: few survive


def _rows(url: str, query: str) -> list[Any]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def test_migration_backfills_postings_of_older_knowledge_bases(pg_url: str) -> None:
    chunks = corpus(120)
    store = store_with(pg_url, chunks)
    store.delete_documents([chunks[1].doc_id])
    store.commit()
    postings = "SELECT kb, term, row_id, tf, len FROM kb_postings ORDER BY 1, 2, 3"
    terms = "SELECT kb, term, df FROM kb_terms WHERE df > 0 ORDER BY 1, 2"
    before = _rows(pg_url, postings), _rows(pg_url, terms)
    with psycopg.connect(pg_url) as conn:  # back to schema 4: chunks with tsvectors only
        conn.execute("DROP TABLE kb_postings, kb_terms")
        conn.execute("CREATE INDEX kb_chunks_tsv ON kb_chunks USING gin (tsv)")
        conn.execute("DELETE FROM schema_migrations WHERE version = 5")
    assert migrate(pg_url) == 5
    capped = [(kb, t, r, 256 if t == "uniqx" else tf, n) for kb, t, r, tf, n in before[0]]
    assert any(p[3] > 256 for p in before[0])
    assert (_rows(pg_url, postings), _rows(pg_url, terms)) == (capped, before[1])
    assert _rows(pg_url, "SELECT count(*) FROM pg_indexes WHERE indexname = 'kb_chunks_tsv'") == [
        (0,)
    ]
    live = [c for c in chunks if c.doc_id != chunks[1].doc_id]
    ref = BM25Index.build([index_text(c) for c in live])
    rows, _ = ref.top_k("w3x w40x", 10)
    assert [c.chunk_id for c, _ in store.keyword_search("w3x w40x", 10)] == [
        live[r].chunk_id for r in rows
    ]
