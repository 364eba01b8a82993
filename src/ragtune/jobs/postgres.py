"""The PostgreSQL backend of :class:`~ragtune.jobs.store.FileTable` and
:class:`~ragtune.jobs.store.JobTable`, chosen by ``RAGTUNE_DATABASE_URL=postgresql://…``.

The same contract as :mod:`ragtune.jobs.sqlite`, for any number of servers and workers on any
hosts. A worker claims the oldest waiting job (or a running one whose lease ran out) with
``SELECT … FOR UPDATE SKIP LOCKED``: concurrent claimers skip each other's locked row instead
of waiting, and each job goes to one of them. Leases are measured on the database's clock,
so hosts whose clocks disagree still agree on when a lease ran out. A final write matches the
attempt token in its ``WHERE`` clause, so only the current holder completes a job, once.
Every call opens its own connection and transaction (a server's threads and a worker's
heartbeat thread never share one).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import astuple
from typing import Any, Literal

import psycopg
from psycopg.types.string import TextLoader

from ragtune.jobs.migrations import migrate
from ragtune.jobs.sqlite import (
    _FILE_COLUMNS,
    _JOB_COLUMNS,
    _assignments,
    _file,
    _job,
    _job_row,
    new_event,
)
from ragtune.jobs.store import (
    TERMINAL,
    Claim,
    FileRecord,
    JobEvent,
    JobRecord,
    JobStatus,
    dumps,
    loads,
)

_NOW = "extract(epoch from clock_timestamp())"


class PostgresDB:
    """Files, jobs and job events in a PostgreSQL database (schema migrated on start)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.schema_version = migrate(url)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.url) as conn:  # commits on success, rolls back on error
            # JSON columns come back as their text, so rows convert exactly as SQLite's do
            conn.adapters.register_loader("jsonb", TextLoader)
            yield conn

    # --- files -------------------------------------------------------------------------

    def add_file(self, record: FileRecord) -> None:
        with self._connect() as db:
            _insert_file(db, record)

    def get_file(self, project: str, file_id: str) -> FileRecord | None:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE project = %s AND id = %s",
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
        where = "project = %s" + (" AND purpose = %s" if purpose else "")
        args: list[Any] = [project] + ([purpose] if purpose else [])
        cmp, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        sql = f"SELECT {_FILE_COLUMNS} FROM files WHERE {where}"
        if after is not None:  # an unknown cursor matches nothing (seq compared with NULL)
            sql += f" AND seq {cmp} (SELECT seq FROM files WHERE {where} AND id = %s)"
            args += [*args, after]
        sql += f" ORDER BY seq {direction} LIMIT %s"
        with self._connect() as db:
            rows = db.execute(sql.encode(), [*args, limit + 1]).fetchall()
        return [_file(r) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, project: str, file_id: str) -> FileRecord | None:
        with self._connect() as db:
            row = db.execute(
                f"DELETE FROM files WHERE project = %s AND id = %s RETURNING {_FILE_COLUMNS}",
                (project, file_id),
            ).fetchone()
        return _file(row) if row else None

    # --- jobs: the API side --------------------------------------------------------------

    def add_job(self, job: JobRecord) -> None:
        with self._connect() as db:
            db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join(['%s'] * 22)})",
                _job_row(job),
            )

    def get_job(self, project: str, job_id: str) -> JobRecord | None:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE project = %s AND id = %s",
                (project, job_id),
            ).fetchone()
        return _job(row) if row else None

    def list_jobs(
        self, project: str, after: str | None, limit: int, metadata: dict[str, str] | None
    ) -> tuple[list[JobRecord], bool]:
        where = "project = %s" + (" AND metadata @> %s::jsonb" if metadata else "")
        args: list[Any] = [project] + ([dumps(metadata)] if metadata else [])
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where}"
        if after is not None:
            sql += f" AND seq < (SELECT seq FROM jobs WHERE {where} AND id = %s)"
            args += [*args, after]
        sql += " ORDER BY seq DESC LIMIT %s"
        with self._connect() as db:
            rows = db.execute(sql.encode(), [*args, limit + 1]).fetchall()
        return [_job(r) for r in rows[:limit]], len(rows) > limit

    def count_waiting(self) -> int:
        with self._connect() as db:
            row = db.execute(
                "SELECT count(*) FROM jobs WHERE status IN ('validating_files', 'queued')"
            ).fetchone()
        return int(row[0]) if row else 0

    def request_cancel(self, project: str, job_id: str) -> JobRecord | None:
        """Cancel a job: at once when no worker holds it, else at the holder's next step."""
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE project = %s AND id = %s FOR UPDATE",
                (project, job_id),
            ).fetchone()
            if row is None:
                return None
            job = _job(row)
            if job.status in TERMINAL:
                return job
            if job.attempt is None:
                db.execute(
                    "UPDATE jobs SET status = 'cancelled', finished_at = %s, "
                    "cancel_requested = 1 WHERE id = %s",
                    (int(time.time()), job_id),
                )
                _insert_event(db, new_event(job_id, "Fine-tuning job cancelled"))
            else:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = %s", (job_id,))
                _insert_event(db, new_event(job_id, "Cancellation requested"))
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,)).fetchone()
        assert row is not None
        return _job(row)

    def delete_model(self, project: str, job_id: str) -> bool:
        with self._connect() as db:
            cur = db.execute(
                "UPDATE jobs SET model_deleted = 1 WHERE project = %s AND id = %s "
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
                "WHERE job_id = %s ORDER BY seq",
                (job_id,),
            ).fetchall()
        return [JobEvent(r[0], r[1], r[2], r[3], r[4], r[5], loads(r[6]), r[7]) for r in rows]

    # --- jobs: the worker side -----------------------------------------------------------

    def claim(self, worker: str, lease_s: float) -> Claim | None:
        """Take the oldest waiting job, or a running one whose holder's lease ran out; rows
        another claimer has locked are skipped, so two claimers never get the same job."""
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN "
                "('validating_files', 'queued', 'running') "
                f"AND (attempt IS NULL OR lease_until IS NULL OR lease_until < {_NOW}) "
                "ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED"
            ).fetchone()
            if row is None:
                return None
            job = _job(row)
            attempt = uuid.uuid4().hex
            status = job.status if job.status == "validating_files" else "running"
            row = db.execute(
                f"UPDATE jobs SET attempt = %s, worker = %s, lease_until = {_NOW} + %s, "
                "status = %s, attempts = attempts + %s WHERE id = %s "
                f"RETURNING {_JOB_COLUMNS}",
                (attempt, worker, lease_s, status, int(status == "running"), job.id),
            ).fetchone()
            if job.status == "running" or (job.status == "validating_files" and job.attempt):
                _insert_event(
                    db,
                    new_event(
                        job.id, "The worker running this job stopped; resuming on another", "warn"
                    ),
                )
        assert row is not None
        return Claim(_job(row), attempt)

    def heartbeat(self, job_id: str, attempt: str, lease_s: float) -> bool:
        with self._connect() as db:
            cur = db.execute(
                f"UPDATE jobs SET lease_until = {_NOW} + %s WHERE id = %s AND attempt = %s",
                (lease_s, job_id, attempt),
            )
        return cur.rowcount == 1

    def should_stop(self, job_id: str, attempt: str) -> bool:
        with self._connect() as db:
            row = db.execute(
                "SELECT cancel_requested, attempt FROM jobs WHERE id = %s", (job_id,)
            ).fetchone()
        return row is None or bool(row[0]) or row[1] != attempt

    def update_running(self, job_id: str, attempt: str, values: dict[str, Any]) -> bool:
        sets, args = _sets(values)
        with self._connect() as db:
            cur = db.execute(
                f"UPDATE jobs SET {sets} WHERE id = %s AND attempt = %s".encode(),
                (*args, job_id, attempt),
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
        """Move the job to ``status`` and release it, only if ``attempt`` still holds it; the
        result files and final events are inserted in the same transaction (all or nothing:
        a client that sees the status sees them)."""
        sets, args = _sets(values)
        terminal = status in TERMINAL
        with self._connect() as db:
            cur = db.execute(
                f"UPDATE jobs SET {sets + ', ' if sets else ''}status = %s, attempt = NULL, "
                "lease_until = NULL, finished_at = %s WHERE id = %s AND attempt = %s".encode(),
                (*args, status, int(time.time()) if terminal else None, job_id, attempt),
            )
            if cur.rowcount != 1:
                return False
            for f in files:
                _insert_file(db, f)
            for e in events:
                _insert_event(db, e)
        return True


def _insert_event(db: psycopg.Connection[Any], e: JobEvent) -> None:
    db.execute(
        "INSERT INTO job_events (id, job_id, created_at, level, message, type, data, at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            e.id,
            e.job_id,
            e.created_at,
            e.level,
            e.message,
            e.type,
            dumps(e.data),
            e.at,
        ),
    )


def _insert_file(db: psycopg.Connection[Any], f: FileRecord) -> None:
    db.execute(f"INSERT INTO files ({_FILE_COLUMNS}) VALUES ({', '.join(['%s'] * 10)})", astuple(f))


def _sets(values: dict[str, Any]) -> tuple[str, list[Any]]:
    """SQLite's checked assignments (JSON as text), with PostgreSQL's placeholders."""
    sets, args = _assignments(values)
    return sets.replace("?", "%s"), args


class PgKeyTable:
    """API keys' sha256 hashes and their projects (the ``api_keys`` table), read per request."""

    def __init__(self, url: str) -> None:
        self.url = url

    def add_key(self, sha256: str, project: str) -> None:
        with psycopg.connect(self.url) as db:
            db.execute("INSERT INTO api_keys (sha256, project) VALUES (%s, %s)", (sha256, project))

    def key_project(self, sha256: str) -> str | None:
        with psycopg.connect(self.url) as db:
            row = db.execute("SELECT project FROM api_keys WHERE sha256 = %s", (sha256,)).fetchone()
        return str(row[0]) if row else None

    def has_keys(self) -> bool:
        with psycopg.connect(self.url) as db:
            return db.execute("SELECT EXISTS (SELECT 1 FROM api_keys)").fetchone() == (True,)


def open_postgres(url: str) -> PostgresDB:
    """The backend at ``url``, or one clear error when it cannot be reached."""
    from ragtune.errors import RagtuneError

    if not url.startswith(("postgresql://", "postgres://")):
        raise RagtuneError(
            f"RAGTUNE_DATABASE_URL={url!r} is not a PostgreSQL URL",
            "set it to postgresql://USER@HOST:PORT/DB or unset it for the embedded backend",
        )
    try:
        return PostgresDB(url)
    except psycopg.OperationalError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RagtuneError(
            f"cannot reach PostgreSQL at RAGTUNE_DATABASE_URL: {first}",
            "start the server or fix the URL",
        ) from None
