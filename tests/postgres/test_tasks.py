"""The task table's contract (comparisons, make-qa), run against SQLite and PostgreSQL alike:
tenancy, pages, one holder per task, leases, exactly-once finish, cancellation."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragtune.jobs.store import JobError
from ragtune.jobs.tasks import TaskDB, TaskRecord


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def tasks(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskDB]:
    if request.param == "sqlite":
        yield TaskDB.sqlite(tmp_path / "db.sqlite")
    else:
        yield TaskDB.postgres(request.getfixturevalue("pg_url"))


def task(i: int, project: str = "p1", kind: str = "comparison") -> TaskRecord:
    return TaskRecord(f"cmp-{i}", project, kind, 1000 + i, {"n": i})  # type: ignore[arg-type]


def test_roundtrip_pages_and_tenancy(tasks: TaskDB) -> None:
    for i in range(5):
        tasks.add(task(i))
    tasks.add(task(7, kind="make_qa"))
    tasks.add(task(9, project="p2"))
    assert tasks.get("p1", "comparison", "cmp-3") == task(3)
    assert tasks.get("p2", "comparison", "cmp-3") is None
    assert tasks.get("p1", "make_qa", "cmp-3") is None
    got, more = tasks.list("p1", "comparison", None, 2)
    assert [t.id for t in got] == ["cmp-4", "cmp-3"] and more
    got, more = tasks.list("p1", "comparison", "cmp-3", 2)
    assert [t.id for t in got] == ["cmp-2", "cmp-1"] and more
    got, more = tasks.list("p1", "comparison", "cmp-1", 2)
    assert [t.id for t in got] == ["cmp-0"] and not more
    assert tasks.list("p1", "comparison", "cmp-9", 2) == ([], False)  # another project's id
    assert tasks.count_waiting() == 7


def test_claim_lease_progress_and_finish_once(tasks: TaskDB) -> None:
    tasks.add(task(1))
    tasks.add(task(2))
    got: list[str] = []
    lock = threading.Lock()

    def claim() -> None:
        c = tasks.claim("w", 60)
        if c is not None:
            with lock:
                got.append(c.task.id)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == ["cmp-1", "cmp-2"]  # each task to one claimer
    assert tasks.claim("w", 60) is None

    tasks.add(task(3))
    a = tasks.claim("w1", 0.05)
    assert a is not None and a.task.id == "cmp-3" and a.task.status == "running"
    assert a.task.attempts == 1
    assert tasks.set_progress("cmp-3", a.attempt, {"stage": "x", "fraction": 0.5})
    time.sleep(0.1)  # the lease runs out: another worker takes the task over
    b = tasks.claim("w2", 60)
    assert b is not None and b.task.id == "cmp-3" and b.task.attempts == 2
    assert b.task.progress == {"stage": "x", "fraction": 0.5}
    assert not tasks.heartbeat("cmp-3", a.attempt, 60)  # the old holder lost it
    assert tasks.should_stop("cmp-3", a.attempt) and not tasks.should_stop("cmp-3", b.attempt)
    assert not tasks.set_progress("cmp-3", a.attempt, {"stage": "y"})
    assert not tasks.finish("cmp-3", a.attempt, "succeeded", result={"x": 1})
    assert tasks.heartbeat("cmp-3", b.attempt, 60)
    assert tasks.finish("cmp-3", b.attempt, "failed", error=JobError("c", "m"))
    assert not tasks.finish("cmp-3", b.attempt, "succeeded")  # exactly once
    done = tasks.get("p1", "comparison", "cmp-3")
    assert done is not None and done.status == "failed" and done.error == JobError("c", "m")
    assert done.finished_at is not None and done.attempt is None


def test_cancel_waiting_at_once_running_at_its_next_stage(tasks: TaskDB) -> None:
    tasks.add(task(1))
    tasks.add(task(2))
    c1 = tasks.request_cancel("p1", "comparison", "cmp-1")
    assert c1 is not None and c1.status == "cancelled" and c1.finished_at is not None
    assert tasks.request_cancel("p2", "comparison", "cmp-2") is None  # not yours
    claim = tasks.claim("w", 60)
    assert claim is not None and claim.task.id == "cmp-2"
    assert not tasks.should_stop("cmp-2", claim.attempt)
    c2 = tasks.request_cancel("p1", "comparison", "cmp-2")
    assert c2 is not None and c2.status == "running" and c2.cancel_requested
    assert tasks.should_stop("cmp-2", claim.attempt)
    assert tasks.finish("cmp-2", claim.attempt, "cancelled")
    # A worker that shuts down puts its task back in the queue.
    tasks.add(task(3))
    claim = tasks.claim("w", 60)
    assert claim is not None and tasks.finish("cmp-3", claim.attempt, "queued")
    again = tasks.get("p1", "comparison", "cmp-3")
    assert again is not None and again.status == "queued" and again.finished_at is None
