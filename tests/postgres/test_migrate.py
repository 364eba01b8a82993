"""`ragtune migrate --to postgresql://…` moves an embedded installation and proves it: counts
and content checksums of both sides are printed and match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.cli import main
from ragtune.ingest.pipeline import ingest
from ragtune.jobs.settings import ServiceSettings
from ragtune.jobs.sqlite import SqliteDB, new_event
from ragtune.retrieve.kb import KnowledgeBase
from tests.postgres.test_contract import file, job
from tests.postgres.test_pgstore import write_corpus

pytestmark = pytest.mark.postgres


def test_migrate_embedded_installation(
    pg_url: str,
    ragtune_home: Path,
    tmp_path: Path,
    tiny_embedder: Path,
    capsys: pytest.CaptureFixture[str],
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

    assert main(["migrate", "--to", pg_url]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    counts = {t["table"]: t["target_count"] for t in out["tables"]}
    assert counts == {
        "files": 3,
        "jobs": 3,
        "job_events": 3,
        "kb:kb1:chunks": 12,
        "kb:kb1:documents": 12,
    }
    assert all(t["source_sha256"] == t["target_sha256"] for t in out["tables"])
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
