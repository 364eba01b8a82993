"""The SQLite backend of :class:`~ragtune.jobs.store.FileTable` and
:class:`~ragtune.jobs.store.JobTable`: one database file in the data directory.

Every call opens its own connection (WAL mode, a busy timeout), so the server's threads, the
worker's heartbeat thread and other processes on the same machine share the file safely.
Claims and final writes run in ``BEGIN IMMEDIATE`` transactions: two workers never hold the
same job, and only the holder of the current attempt token can finish it (exactly once).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from ragtune.jobs.store import (
    TERMINAL,
    Claim,
    FileRecord,
    JobError,
    JobEvent,
    JobRecord,
    JobStatus,
    dumps,
    loads,
    page,
)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL, project TEXT NOT NULL, filename TEXT NOT NULL,
    purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
    key TEXT NOT NULL, status TEXT NOT NULL, status_details TEXT, expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS files_project ON files (project, seq);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL, project TEXT NOT NULL, created_at INTEGER NOT NULL,
    model TEXT NOT NULL, training_file TEXT NOT NULL, validation_file TEXT, suffix TEXT,
    seed INTEGER NOT NULL, metadata TEXT, spec TEXT NOT NULL, status TEXT NOT NULL,
    error TEXT, fine_tuned_model TEXT, finished_at INTEGER, trained_tokens INTEGER,
    estimated_finish INTEGER, result_files TEXT NOT NULL DEFAULT '[]',
    attempt TEXT, worker TEXT, attempts INTEGER NOT NULL DEFAULT 0, lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0, model_deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_project ON jobs (project, seq);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL, created_at INTEGER NOT NULL,
    level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, seq);
"""
_JOB_COLUMNS = (
    "id, project, created_at, model, training_file, validation_file, suffix, seed, metadata, "
    "spec, status, error, fine_tuned_model, finished_at, trained_tokens, estimated_finish, "
    "result_files, attempt, attempts, lease_until, cancel_requested, model_deleted"
)
_FILE_COLUMNS = (
    "id, project, filename, purpose, bytes, created_at, key, status, status_details, expires_at"
)
# Columns a worker may set on its running job, and on finishing it.
_UPDATABLE = frozenset(
    {"trained_tokens", "estimated_finish", "fine_tuned_model", "error", "result_files"}
)


class SqliteDB:
    """Files, jobs and job events in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            db.commit()
        finally:
            db.close()

    @contextlib.contextmanager
    def _connect(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    # --- files -------------------------------------------------------------------------

    def add_file(self, record: FileRecord) -> None:
        with self._connect() as db:
            _insert_file(db, record)

    def get_file(self, project: str, file_id: str) -> FileRecord | None:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE project = ? AND id = ?",
                (project, file_id),
            ).fetchone()
        return _file(row) if row else None

    def list_files(
        self,
        project: str,
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"],
        purpose: str | None,
    ) -> tuple[list[FileRecord], bool]:
        sql = f"SELECT {_FILE_COLUMNS} FROM files WHERE project = ?"
        args: list[Any] = [project]
        if purpose:
            sql += " AND purpose = ?"
            args.append(purpose)
        sql += f" ORDER BY seq {'ASC' if order == 'asc' else 'DESC'}"
        with self._connect() as db:
            files = [_file(r) for r in db.execute(sql, args).fetchall()]
        return page(files, [f.id for f in files], after, limit)

    def delete_file(self, project: str, file_id: str) -> FileRecord | None:
        with self._connect(immediate=True) as db:
            row = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE project = ? AND id = ?",
                (project, file_id),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM files WHERE project = ? AND id = ?", (project, file_id))
        return _file(row)

    # --- jobs: the API side --------------------------------------------------------------

    def add_job(self, job: JobRecord) -> None:
        with self._connect() as db:
            db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * 22)})",
                _job_row(job),
            )

    def get_job(self, project: str, job_id: str) -> JobRecord | None:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE project = ? AND id = ?", (project, job_id)
            ).fetchone()
        return _job(row) if row else None

    def list_jobs(
        self, project: str, after: str | None, limit: int, metadata: dict[str, str] | None
    ) -> tuple[list[JobRecord], bool]:
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE project = ? ORDER BY seq DESC", (project,)
            ).fetchall()
        jobs = [_job(r) for r in rows]
        if metadata:
            jobs = [
                j for j in jobs if all((j.metadata or {}).get(k) == v for k, v in metadata.items())
            ]
        return page(jobs, [j.id for j in jobs], after, limit)

    def count_waiting(self) -> int:
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('validating_files', 'queued')"
            ).fetchone()
        return int(row[0])

    def request_cancel(self, project: str, job_id: str) -> JobRecord | None:
        """Cancel a job: at once when no worker holds it, else at the holder's next step."""
        now = int(time.time())
        with self._connect(immediate=True) as db:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE project = ? AND id = ?", (project, job_id)
            ).fetchone()
            if row is None:
                return None
            job = _job(row)
            if job.status in TERMINAL:
                return job
            if job.attempt is None:
                db.execute(
                    "UPDATE jobs SET status = 'cancelled', finished_at = ?, cancel_requested = 1 "
                    "WHERE id = ?",
                    (now, job_id),
                )
                _insert_event(db, new_event(job_id, "Fine-tuning job cancelled"))
            else:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                _insert_event(db, new_event(job_id, "Cancellation requested"))
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row)

    def delete_model(self, project: str, job_id: str) -> bool:
        with self._connect() as db:
            cur = db.execute(
                "UPDATE jobs SET model_deleted = 1 WHERE project = ? AND id = ? "
                "AND fine_tuned_model IS NOT NULL AND model_deleted = 0",
                (project, job_id),
            )
        return cur.rowcount == 1

    def add_event(self, event: JobEvent) -> None:
        with self._connect() as db:
            _insert_event(db, event)

    def list_events(self, job_id: str) -> list[JobEvent]:
        """A job's lifecycle events, oldest first (the caller has checked the job's owner)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, job_id, created_at, level, message, type, data, at FROM job_events "
                "WHERE job_id = ? ORDER BY seq",
                (job_id,),
            ).fetchall()
        return [JobEvent(r[0], r[1], r[2], r[3], r[4], r[5], loads(r[6]), r[7]) for r in rows]

    # --- jobs: the worker side -----------------------------------------------------------

    def claim(self, worker: str, lease_s: float) -> Claim | None:
        """Take the oldest waiting job, or a running one whose holder's lease ran out."""
        now = time.time()
        with self._connect(immediate=True) as db:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN "
                "('validating_files', 'queued', 'running') "
                "AND (attempt IS NULL OR lease_until IS NULL OR lease_until < ?) "
                "ORDER BY seq LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            job = _job(row)
            attempt = uuid.uuid4().hex
            status = job.status if job.status == "validating_files" else "running"
            db.execute(
                "UPDATE jobs SET attempt = ?, worker = ?, lease_until = ?, status = ?, "
                "attempts = attempts + ? WHERE id = ?",
                (attempt, worker, now + lease_s, status, int(status == "running"), job.id),
            )
            if job.status == "running" or (job.status == "validating_files" and job.attempt):
                message = "The worker running this job stopped; resuming on another"
                _insert_event(db, new_event(job.id, message, "warn"))
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job.id,)).fetchone()
        return Claim(_job(row), attempt)

    def heartbeat(self, job_id: str, attempt: str, lease_s: float) -> bool:
        with self._connect() as db:
            cur = db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND attempt = ?",
                (time.time() + lease_s, job_id, attempt),
            )
        return cur.rowcount == 1

    def should_stop(self, job_id: str, attempt: str) -> bool:
        with self._connect() as db:
            row = db.execute(
                "SELECT cancel_requested, attempt FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return row is None or bool(row[0]) or row[1] != attempt

    def update_running(self, job_id: str, attempt: str, values: dict[str, Any]) -> bool:
        sets, args = _assignments(values)
        with self._connect() as db:
            cur = db.execute(
                f"UPDATE jobs SET {sets} WHERE id = ? AND attempt = ?", (*args, job_id, attempt)
            )
        return cur.rowcount == 1

    def finish(
        self,
        job_id: str,
        attempt: str,
        status: JobStatus,
        values: dict[str, Any],
        files: Iterable[FileRecord] = (),
        events: Iterable[JobEvent] = (),
    ) -> bool:
        """Move the job to ``status`` and release it, only if ``attempt`` still holds it; its
        result files and final events are written in the same transaction (a client that
        sees the status sees them)."""
        sets, args = _assignments(values)
        terminal = status in TERMINAL
        with self._connect(immediate=True) as db:
            cur = db.execute(
                f"UPDATE jobs SET {sets + ', ' if sets else ''}status = ?, attempt = NULL, "
                "lease_until = NULL, finished_at = ? WHERE id = ? AND attempt = ?",
                (*args, status, int(time.time()) if terminal else None, job_id, attempt),
            )
            if cur.rowcount != 1:
                return False
            for f in files:
                _insert_file(db, f)
            for e in events:
                _insert_event(db, e)
        return True


def _insert_event(db: sqlite3.Connection, event: JobEvent) -> None:
    db.execute(
        "INSERT INTO job_events (id, job_id, created_at, level, message, type, data, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.id,
            event.job_id,
            event.created_at,
            event.level,
            event.message,
            event.type,
            dumps(event.data),
            event.at,
        ),
    )


def new_event(
    job_id: str,
    message: str,
    level: Literal["info", "warn", "error"] = "info",
    type: Literal["message", "metrics"] = "message",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    now = time.time()
    return JobEvent(
        f"ftevent-{uuid.uuid4().hex[:24]}", job_id, int(now), level, message, type, data, now
    )


def _insert_file(db: sqlite3.Connection, f: FileRecord) -> None:
    db.execute(
        f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            f.id,
            f.project,
            f.filename,
            f.purpose,
            f.bytes,
            f.created_at,
            f.key,
            f.status,
            f.status_details,
            f.expires_at,
        ),
    )


def _assignments(values: dict[str, Any]) -> tuple[str, list[Any]]:
    unknown = set(values) - _UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    args: list[Any] = []
    for k, v in values.items():
        if k == "error":
            v = dumps(
                None if v is None else {"code": v.code, "message": v.message, "param": v.param}
            )
        elif k == "result_files":
            v = dumps(list(v))
        args.append(v)
    return ", ".join(f"{k} = ?" for k in values), args


def _file(r: Sequence[Any]) -> FileRecord:
    return FileRecord(*r)


def _job_row(j: JobRecord) -> tuple[Any, ...]:
    err = (
        None
        if j.error is None
        else {"code": j.error.code, "message": j.error.message, "param": j.error.param}
    )
    return (
        j.id,
        j.project,
        j.created_at,
        j.model,
        j.training_file,
        j.validation_file,
        j.suffix,
        j.seed,
        dumps(j.metadata),
        dumps(j.spec),
        j.status,
        dumps(err),
        j.fine_tuned_model,
        j.finished_at,
        j.trained_tokens,
        j.estimated_finish,
        dumps(j.result_files),
        j.attempt,
        j.attempts,
        j.lease_until,
        int(j.cancel_requested),
        int(j.model_deleted),
    )


def _job(r: Sequence[Any]) -> JobRecord:
    err = loads(r[11])
    return JobRecord(
        id=r[0],
        project=r[1],
        created_at=r[2],
        model=r[3],
        training_file=r[4],
        validation_file=r[5],
        suffix=r[6],
        seed=r[7],
        metadata=loads(r[8]),
        spec=loads(r[9]),
        status=r[10],
        error=JobError(**err) if err else None,
        fine_tuned_model=r[12],
        finished_at=r[13],
        trained_tokens=r[14],
        estimated_finish=r[15],
        result_files=loads(r[16]) or [],
        attempt=r[17],
        attempts=r[18],
        lease_until=r[19],
        cancel_requested=bool(r[20]),
        model_deleted=bool(r[21]),
    )
