"""The pgvector + full-text store gives the embedded store's results on the same data: every
search mode, filters, and the hybrid fusion above the Store protocol."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from ragtune.ingest.pipeline import ingest
from ragtune.retrieve.kb import KnowledgeBase
from ragtune.retrieve.store import Filter

pytestmark = pytest.mark.postgres

_TEXT = (
    "zorbland capital vetrin founded river mountain grass green spring sea blue waves "
    "loud city north south trade salt harbour king queen bridge winter summer rain "
    "forest wolf owl lantern market copper silver ship storm island"
)
WORDS = tuple(_TEXT.split())


def write_corpus(root: Path, n: int = 40) -> Path:
    rng = random.Random(7)
    docs = root / "docs"
    for team in ("a", "b"):
        (docs / team).mkdir(parents=True)
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 40))]
        (docs / ("a" if i % 3 else "b") / f"d{i:02d}.txt").write_text(" ".join(words) + ".\n")
    return docs


QUERIES = ["zorbland capital", "storm ship island harbour", "green grass spring", "wolf"]


@pytest.fixture
def both(tmp_path: Path, tiny_embedder: Path, pg_url: str) -> tuple[KnowledgeBase, KnowledgeBase]:
    from ragtune.jobs.migrations import migrate
    from ragtune.retrieve.pgstore import PgStore, copy_lance_store

    ingest([write_corpus(tmp_path)], "t", embedder=str(tiny_embedder), backend="torch")
    lance = KnowledgeBase.open("t")
    migrate(pg_url)
    store = PgStore(pg_url, "t", lance.store.dim, exact=True)
    copied = copy_lance_store(lance.store, store)
    store.commit()
    assert copied == lance.count() == store.count()
    pg = KnowledgeBase.open("t")
    pg.store = store  # type: ignore[assignment]  # the same search code above the protocol
    return lance, pg


def assert_same(a: list, b: list) -> None:  # type: ignore[type-arg]
    assert [h.chunk.chunk_id for h in a] == [h.chunk.chunk_id for h in b]
    assert [h.chunk for h in a] == [h.chunk for h in b]
    # float32 cosine in LanceDB vs pgvector differ in the 7th digit; min-max fusion magnifies it
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_search_parity_with_embedded(both: tuple[KnowledgeBase, KnowledgeBase], mode: str) -> None:
    lance, pg = both
    for q in QUERIES:
        for fusion in ("convex", "rrf"):
            a = lance.search(q, k=10, mode=mode, fusion=fusion, candidates=20)  # type: ignore[arg-type]
            b = pg.search(q, k=10, mode=mode, fusion=fusion, candidates=20)  # type: ignore[arg-type]
            assert len(a) == 10 if mode != "bm25" else len(a) > 0
            assert_same(a, b)


def test_filtered_search_parity(both: tuple[KnowledgeBase, KnowledgeBase]) -> None:
    lance, pg = both
    some = next(iter(lance.store.doc_index().values()))[1]
    team_b = some.rsplit("/", 2)[0] + "/b"
    for where in (Filter(sources=(team_b,)), Filter(doc_ids=("docs/a",))):
        for mode in ("bm25", "dense", "hybrid"):
            a = lance.search("storm wolf copper", k=5, mode=mode, where=where)  # type: ignore[arg-type]
            b = pg.search("storm wolf copper", k=5, mode=mode, where=where)  # type: ignore[arg-type]
            assert a and all(where.matches(h.chunk) for h in a)
            assert_same(a, b)


def test_hnsw_agrees_on_small_data_and_deletes_publish_on_commit(
    both: tuple[KnowledgeBase, KnowledgeBase], pg_url: str
) -> None:
    from ragtune.retrieve.pgstore import PgStore

    lance, pg = both
    approx = PgStore(pg_url, "t", lance.store.dim, ef_search=100)
    vec = lance.embed_queries(["storm ship"])[0]
    exact = [c.chunk_id for c, _ in pg.store.dense_search(vec, 10)]
    assert [c.chunk_id for c, _ in approx.dense_search(vec, 10)] == exact
    victim = exact[0].split("#")[0]
    approx.delete_documents([victim])
    assert pg.store.count() == lance.count()  # staged, not yet visible
    approx.commit()
    assert pg.store.count() == (lance.count()[0] - 1, lance.count()[1] - 1)
    assert victim not in [c.doc_id for c, _ in approx.dense_search(vec, 10)]
    assert pg.store.get_document(victim) is None
