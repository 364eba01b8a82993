"""The backend contract of FileTable and JobTable, run against SQLite and PostgreSQL alike:
both backends must give the same answers to the same calls."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ragtune.jobs.backend import Database
from ragtune.jobs.sqlite import SqliteDB, new_event
from ragtune.jobs.store import FileRecord, JobError, JobRecord


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        yield SqliteDB(tmp_path / "db.sqlite")
    else:
        from ragtune.jobs.postgres import PostgresDB

        yield PostgresDB(request.getfixturevalue("pg_url"))


def file(i: int, project: str = "p1", purpose: str = "fine-tune") -> FileRecord:
    return FileRecord(f"file-{i}", project, f"f{i}.jsonl", purpose, 100 + i, 1000 + i, f"k{i}")


def job(i: int, project: str = "p1", status: str = "queued", **kw: object) -> JobRecord:
    return JobRecord(
        id=f"ftjob-{i}",
        project=project,
        created_at=2000 + i,
        model="m",
        training_file="file-1",
        validation_file=None,
        suffix="s",
        seed=i,
        metadata=kw.pop("metadata", None),  # type: ignore[arg-type]
        spec={"hyperparameters": {"n_epochs": 1}, "training_type": "lora"},
        status=status,  # type: ignore[arg-type]
    )


def test_files_roundtrip_pages_and_tenancy(db: Database) -> None:
    for i in range(5):
        db.add_file(file(i, purpose="fine-tune" if i % 2 == 0 else "assistants"))
    db.add_file(file(9, project="p2"))
    assert db.get_file("p1", "file-3") == file(3, purpose="assistants")
    assert db.get_file("p2", "file-3") is None
    got, more = db.list_files("p1", None, 2, "asc", None)
    assert [f.id for f in got] == ["file-0", "file-1"] and more
    got, more = db.list_files("p1", "file-1", 2, "asc", None)
    assert [f.id for f in got] == ["file-2", "file-3"] and more
    got, more = db.list_files("p1", "file-3", 2, "asc", None)
    assert [f.id for f in got] == ["file-4"] and not more
    got, more = db.list_files("p1", None, 10, "desc", "fine-tune")
    assert [f.id for f in got] == ["file-4", "file-2", "file-0"] and not more
    got, more = db.list_files("p1", "file-4", 1, "desc", "fine-tune")
    assert [f.id for f in got] == ["file-2"] and more
    assert db.list_files("p1", "file-nope", 10, "asc", None) == ([], False)
    assert db.delete_file("p2", "file-1") is None
    assert db.delete_file("p1", "file-1") == file(1, purpose="assistants")
    assert db.get_file("p1", "file-1") is None


def test_jobs_roundtrip_metadata_filter_and_waiting(db: Database) -> None:
    db.add_job(job(1, metadata={"team": "a"}))
    db.add_job(job(2, status="validating_files", metadata={"team": "b"}))
    db.add_job(job(3, metadata={"team": "a", "x": "y"}))
    db.add_job(job(4, project="p2"))
    assert db.get_job("p1", "ftjob-2") == job(2, status="validating_files", metadata={"team": "b"})
    assert db.get_job("p2", "ftjob-1") is None
    got, more = db.list_jobs("p1", None, 2, None)
    assert [j.id for j in got] == ["ftjob-3", "ftjob-2"] and more
    got, more = db.list_jobs("p1", "ftjob-2", 2, None)
    assert [j.id for j in got] == ["ftjob-1"] and not more
    got, more = db.list_jobs("p1", None, 10, {"team": "a"})
    assert [j.id for j in got] == ["ftjob-3", "ftjob-1"] and not more
    assert db.count_waiting() == 4


def test_claim_order_leases_and_exactly_once_finish(db: Database) -> None:
    db.add_job(job(1, status="validating_files"))
    db.add_job(job(2))
    first = db.claim("w1", 60)
    assert first is not None and first.job.id == "ftjob-1"
    assert first.job.status == "validating_files" and first.job.attempts == 0
    second = db.claim("w2", 60)
    assert second is not None and second.job.id == "ftjob-2"
    assert second.job.status == "running" and second.job.attempts == 1
    assert second.job.attempt == second.attempt
    assert db.claim("w3", 60) is None  # both held, leases alive
    assert db.heartbeat("ftjob-2", second.attempt, 60)
    assert not db.heartbeat("ftjob-2", "stale", 60)
    assert db.update_running("ftjob-2", second.attempt, {"estimated_finish": 99})
    assert not db.update_running("ftjob-2", "stale", {"estimated_finish": 1})
    with pytest.raises(ValueError):
        db.update_running("ftjob-2", second.attempt, {"status": "succeeded"})
    result = file(50)
    values = {
        "fine_tuned_model": "ft:m:s:ftjob-2",
        "trained_tokens": 123,
        "result_files": [result.id],
    }
    final = [new_event("ftjob-2", "The job has successfully completed")]
    assert not db.finish("ftjob-2", "stale", "succeeded", values, [result], final)
    assert db.get_file("p1", result.id) is None and db.list_events("ftjob-2") == []
    assert db.finish("ftjob-2", second.attempt, "succeeded", values, [result], final)
    assert db.list_events("ftjob-2") == final  # written with the status, never after it
    assert not db.finish("ftjob-2", second.attempt, "failed", {})  # exactly once
    done = db.get_job("p1", "ftjob-2")
    assert done is not None and done.status == "succeeded" and done.attempt is None
    assert done.trained_tokens == 123 and done.result_files == [result.id]
    assert done.finished_at is not None and done.estimated_finish == 99
    assert db.get_file("p1", result.id) == result
    # validation passes: back to queued, then claimed again as a training run
    assert db.finish("ftjob-1", first.attempt, "queued", {})
    queued = db.get_job("p1", "ftjob-1")
    assert queued is not None and queued.status == "queued" and queued.finished_at is None
    again = db.claim("w1", 60)
    assert again is not None and again.job.id == "ftjob-1" and again.job.status == "running"


def test_expired_lease_is_reclaimed_and_old_holder_fenced_off(db: Database) -> None:
    db.add_job(job(1))
    dead = db.claim("w1", -1.0)  # its lease is already over: the worker "died"
    assert dead is not None
    taken = db.claim("w2", 60)
    assert taken is not None and taken.job.id == "ftjob-1" and taken.attempt != dead.attempt
    assert taken.job.attempts == 2
    assert db.should_stop("ftjob-1", dead.attempt)
    assert not db.should_stop("ftjob-1", taken.attempt)
    assert not db.heartbeat("ftjob-1", dead.attempt, 60)
    assert not db.finish("ftjob-1", dead.attempt, "failed", {"error": JobError("x", "y")})
    assert db.finish("ftjob-1", taken.attempt, "succeeded", {"trained_tokens": 5})
    messages = [e.message for e in db.list_events("ftjob-1")]
    assert messages == ["The worker running this job stopped; resuming on another"]


def test_cancel_unheld_at_once_held_at_next_step(db: Database) -> None:
    db.add_job(job(1))
    db.add_job(job(2))
    cancelled = db.request_cancel("p1", "ftjob-1")
    assert cancelled is not None and cancelled.status == "cancelled"
    assert cancelled.cancel_requested and cancelled.finished_at is not None
    assert db.request_cancel("p2", "ftjob-2") is None
    held = db.claim("w", 60)
    assert held is not None and held.job.id == "ftjob-2"
    assert not db.should_stop("ftjob-2", held.attempt)
    pending = db.request_cancel("p1", "ftjob-2")
    assert pending is not None and pending.status == "running" and pending.cancel_requested
    assert db.should_stop("ftjob-2", held.attempt)
    assert db.finish("ftjob-2", held.attempt, "cancelled", {})
    final = db.request_cancel("p1", "ftjob-2")
    assert final is not None and final.status == "cancelled"
    assert [e.message for e in db.list_events("ftjob-2")] == ["Cancellation requested"]
    assert db.count_waiting() == 0


def test_events_and_model_deletion(db: Database) -> None:
    db.add_job(replace(job(1), fine_tuned_model="ft:m:s:ftjob-1", status="succeeded"))
    db.add_job(job(2))
    e1 = new_event("ftjob-1", "step 1", type="metrics", data={"step": 1, "train_loss": 0.5})
    e2 = new_event("ftjob-1", "done", level="warn")
    db.add_event(e1)
    db.add_event(e2)
    assert db.list_events("ftjob-1") == [e1, e2]
    assert db.list_events("ftjob-2") == []
    assert not db.delete_model("p2", "ftjob-1")
    assert not db.delete_model("p1", "ftjob-2")  # no model yet
    assert db.delete_model("p1", "ftjob-1")
    assert not db.delete_model("p1", "ftjob-1")
    got = db.get_job("p1", "ftjob-1")
    assert got is not None and got.model_deleted


def test_concurrent_claimers_never_share_a_job(db: Database) -> None:
    for i in range(12):
        db.add_job(job(i))
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (c := db.claim(name, 60)) is not None:
            with lock:
                claimed.append(c.job.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(f"ftjob-{i}" for i in range(12))


@pytest.mark.postgres
def test_migrations_versioned_and_idempotent(pg_url: str) -> None:
    import psycopg

    from ragtune.jobs.migrations import MIGRATIONS
    from ragtune.jobs.postgres import PostgresDB

    assert PostgresDB(pg_url).schema_version == MIGRATIONS[-1].version
    assert PostgresDB(pg_url).schema_version == MIGRATIONS[-1].version  # second start: no-op
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]


@pytest.mark.postgres
def test_backend_chosen_by_database_url(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ragtune.errors import RagtuneError
    from ragtune.jobs.backend import open_backend
    from ragtune.jobs.postgres import PostgresDB
    from ragtune.jobs.settings import ServiceSettings

    settings = ServiceSettings(home=tmp_path)
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", pg_url)
    db, _ = open_backend(settings)
    assert isinstance(db, PostgresDB)
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", "mysql://x")
    with pytest.raises(RagtuneError, match="not a PostgreSQL URL"):
        open_backend(settings)
    monkeypatch.delenv("RAGTUNE_DATABASE_URL")
    assert isinstance(open_backend(settings)[0], SqliteDB)
