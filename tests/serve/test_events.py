"""Job events come out in the order they happened, also when several share a timestamp."""

from __future__ import annotations

from pathlib import Path

from ragtune.jobs.sqlite import SqliteDB
from ragtune.jobs.store import JobEvent, newest_first


def _event(name: str, at: float) -> JobEvent:
    return JobEvent(name, "ftjob-1", int(at), "info", name, at=at)


def test_newest_first_breaks_ties_by_source_order() -> None:
    db = [_event("queued", 5.0), _event("running", 5.0)]
    run = [_event("step 1", 5.0), _event("step 2", 5.25), _event("step 3", 5.25)]
    got = [e.id for e in newest_first(db, run)]
    assert got == ["step 3", "step 2", "step 1", "running", "queued"]


def test_sqlite_lists_events_in_insertion_order_within_one_second(tmp_path: Path) -> None:
    db = SqliteDB(tmp_path / "jobs.db")
    names = ["c", "a", "d", "b"]  # not in id order; all in the same second and `at`
    for name in names:
        db.add_event(_event(name, 7.0))
    assert [e.id for e in db.list_events("ftjob-1")] == names
