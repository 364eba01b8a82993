"""The vector store API tests of tests/serve/test_vector_stores.py again, on PostgreSQL: the
tables in PostgreSQL (``PgVectorStoreDB``) and each store's chunks in ``PgStore``, chosen by
``RAGTUNE_DATABASE_URL`` alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.conftest import Served, serving
from tests.serve.test_vector_stores import (  # noqa: F401  (collected here, on PostgreSQL)
    test_deleted_file_leaves_search_at_once,
    test_file_attributes_update_changes_filtering,
    test_file_batches,
    test_ingestion_completes_once_after_a_worker_dies,
    test_ingestion_job_completes_files_and_counts,
    test_other_key_cannot_see_or_search_the_store,
    test_search_ranks_filters_and_thresholds,
    test_store_update_list_delete,
    test_unsupported_file_fails_with_last_error,
    test_vector_store_search_equals_ragtune_search,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def served(
    tiny_lm: Path,
    tiny_embedder: Path,
    ragtune_home: Path,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Served]:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", pg_url)
    with serving(tiny_lm, tiny_embedder, ragtune_home) as s:
        yield s


def test_the_tables_and_chunks_are_in_postgresql(served: Served, pg_url: str) -> None:
    from ragtune.jobs.backend import open_vector_stores
    from ragtune.jobs.vector_stores_pg import PgVectorStoreDB
    from ragtune.retrieve.kb import KnowledgeBase
    from ragtune.retrieve.pgstore import PgStore
    from tests.postgres.test_processes import db_rows
    from tests.serve.test_vector_stores import make_store

    store_id, ids = make_store(served)
    served.run_worker()
    assert isinstance(open_vector_stores(served.settings), PgVectorStoreDB)
    assert isinstance(KnowledgeBase.open(store_id).store, PgStore)
    assert not (served.settings.home / "ragtune.sqlite").exists()
    assert db_rows(
        pg_url, "SELECT count(*) FROM vector_store_files WHERE status = 'completed'"
    ) == [(4,)]
    assert db_rows(
        pg_url, "SELECT count(DISTINCT doc_id) FROM kb_chunks WHERE kb = %s", (store_id,)
    ) == [(4,)]
    assert db_rows(pg_url, "SELECT count(*) FROM kb_manifests WHERE kb = %s", (store_id,)) == [(1,)]
    r = served.client.delete(f"/v1/vector_stores/{store_id}", headers=served.headers())
    assert r.status_code == 200
    assert db_rows(pg_url, "SELECT count(*) FROM kb_chunks WHERE kb = %s", (store_id,)) == [(0,)]
    assert len(ids) == 4


def test_concurrent_ingest_claimers_never_share_a_file(pg_url: str) -> None:
    import threading

    from ragtune.jobs.vector_store_records import IngestClaim, VectorStoreRecord, VSFileRecord
    from ragtune.jobs.vector_stores_pg import PgVectorStoreDB

    db = PgVectorStoreDB(pg_url)
    for s in range(4):
        db.add_store(VectorStoreRecord(f"vs_{s}", "p", "n", 1, 1, None, None, 800, 400))
        db.add_files(
            [
                VSFileRecord(
                    f"vs_{s}",
                    f"f{i}",
                    "p",
                    "a.txt",
                    "k",
                    1,
                    "in_progress",
                    None,
                    0,
                    None,
                    None,
                    None,
                )
                for i in range(3)
            ]
        )
    claims: list[IngestClaim] = []
    lock = threading.Lock()

    def claim() -> None:
        while (c := db.claim_ingest(lease_s=60)) is not None:
            with lock:
                claims.append(c)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [(f.vector_store_id, f.file_id) for c in claims for f in c.files]
    assert sorted(held) == sorted((f"vs_{s}", f"f{i}") for s in range(4) for i in range(3))
    assert all(len({f.vector_store_id for f in c.files}) == 1 for c in claims)
    assert db.claim_ingest(lease_s=60) is None  # all leased
    assert db.heartbeat_ingest(claims[0], lease_s=60)
