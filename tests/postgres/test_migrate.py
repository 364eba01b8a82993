"""`ragtune migrate --to postgresql://…` moves an embedded installation and proves it: counts
and content checksums of both sides are printed and match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.cli import main
from ragtune.ingest.pipeline import ingest
from ragtune.jobs.backend import open_key_table, open_vector_stores
from ragtune.jobs.keys import create_key, load_keys
from ragtune.jobs.objects import LocalObjectStore
from ragtune.jobs.run_store import RunStore
from ragtune.jobs.settings import ServiceSettings
from ragtune.jobs.sqlite import SqliteDB, new_event
from ragtune.jobs.tasks import TaskDB, TaskRecord
from ragtune.jobs.vector_store_records import BatchRecord, VectorStoreRecord, VSFileRecord
from ragtune.jobs.vector_stores import VectorStoreDB
from ragtune.retrieve.kb import KnowledgeBase
from tests.postgres.test_contract import file, job
from tests.postgres.test_pgstore import write_corpus
from tests.serve.test_run_store import fake_run

pytestmark = pytest.mark.postgres


def test_migrate_embedded_installation(
    pg_url: str,
    ragtune_home: Path,
    tmp_path: Path,
    tiny_embedder: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ragtune.jobs.postgres import PostgresDB
    from ragtune.retrieve.pgstore import PgStore

    settings = ServiceSettings.from_env()
    db = SqliteDB(settings.database)
    for i in range(3):
        db.add_file(file(i))
        db.add_job(job(i, metadata={"i": str(i)}))
        db.add_event(new_event(f"ftjob-{i}", "step", type="metrics", data={"step": i}))
    claim = db.claim("w", 60)
    assert claim is not None and db.finish(
        claim.job.id, claim.attempt, "succeeded", {"trained_tokens": 7}
    )
    ingest([write_corpus(tmp_path, n=12)], "kb1", embedder=str(tiny_embedder), backend="torch")
    vs = VectorStoreDB(settings.database)
    vs.add_store(VectorStoreRecord("vs_1", "p1", "docs", 5, 6, {"a": "b"}, None, 800, 400))
    vs.add_files(
        [
            VSFileRecord(
                "vs_1",
                f"file-{i}",
                "p1",
                f"f{i}.txt",
                f"k{i}",
                7,
                "completed",
                None,
                9,
                {"team": "x", "n": i},
                "vsfb_1" if i else None,
                f"file-{i}.txt",
            )
            for i in range(2)
        ]
    )
    vs.add_batch(BatchRecord("vsfb_1", "vs_1", "p1", 8, False))
    objects = LocalObjectStore(settings.objects)
    for i in range(3):
        objects.put_bytes(f"k{i}", f"object {i}".encode() * (i + 1))
    key = create_key(settings.keys_file, "team-a")
    tasks = TaskDB.sqlite(settings.database)
    for i, kind in enumerate(("comparison", "make_qa")):
        tasks.add(TaskRecord(f"task-{i}", "p1", kind, 10 + i, {"n": i, "arms": ["ft"]}))
    artifacts = tmp_path / "shared-artifacts"
    fake_run(settings.run_dir("ftjob-done"), [5, 10], status="succeeded")
    fake_run(settings.run_dir("ftjob-half"), [2, 3])  # interrupted: resumable from step 3

    assert main(["migrate", "--to", pg_url, "--artifacts", f"file://{artifacts}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    counts = {t["table"]: t["target_count"] for t in out["tables"]}
    assert counts == {
        "files": 3,
        "jobs": 3,
        "job_events": 3,
        "vector_stores": 1,
        "vector_store_files": 2,
        "vector_store_file_batches": 1,
        "tasks": 2,
        "api_keys": 1,
        "kb:kb1:chunks": 12,
        "kb:kb1:documents": 12,
        "objects": 3,
        "runs": 8,  # the finished run's 4 files and 2 checkpoints; the newest checkpoint
        # of the other and its events
    }
    assert all(t["source_sha256"] == t["target_sha256"] for t in out["tables"])
    copied = {t["table"]: t for t in out["tables"]}
    assert copied["kb:kb1:chunks"]["source_sha256"] == copied["kb:kb1:chunks"]["target_sha256"]
    assert (artifacts / "k2").read_bytes() == b"object 2" * 3
    runs = RunStore(f"file://{artifacts}")
    assert runs.published("ftjob-done") is not None and runs.published("ftjob-half") is None
    assert runs.restore_checkpoint("ftjob-half", tmp_path / "other-host" / "ftjob-half") == 3

    # the installation now runs on PostgreSQL: tables, keys and knowledge bases are there
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", pg_url)
    pg_vs = open_vector_stores(settings)
    assert pg_vs.store_files("p1", "vs_1") == vs.store_files("p1", "vs_1")
    assert pg_vs.get_batch("p1", "vs_1", "vsfb_1") == vs.get_batch("p1", "vs_1", "vsfb_1")
    assert load_keys(None, settings.keys_file, open_key_table()).project(key) == "team-a"
    assert TaskDB.postgres(pg_url).get("p1", "make_qa", "task-1") == tasks.get(
        "p1", "make_qa", "task-1"
    )
    moved = KnowledgeBase.open("kb1")
    assert isinstance(moved.store, PgStore) and moved.count() == (12, 12)
    monkeypatch.delenv("RAGTUNE_DATABASE_URL")
    pg = PostgresDB(pg_url)
    assert pg.get_job("p1", claim.job.id) == db.get_job("p1", claim.job.id)
    assert pg.list_files("p1", None, 10, "asc", None) == db.list_files("p1", None, 10, "asc", None)
    kb = KnowledgeBase.open("kb1")
    store = PgStore(pg_url, "kb1", kb.store.dim, exact=True)
    vec = kb.embed_queries(["storm ship"])[0]
    assert [c.chunk_id for c, _ in store.dense_search(vec, 5)] == [
        c.chunk_id for c, _ in kb.store.dense_search(vec, 5)
    ]


def test_migrate_bad_url_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--to", "mysql://nope"]) != 0
    err = capsys.readouterr().err
    assert "not a PostgreSQL URL" in err and "Traceback" not in err
