"""The task table: ragtune's own background jobs beside the fine-tuning jobs — comparisons
(``/v1/comparisons``) and training-data generation (make-qa) — with the same worker
contract as the fine-tuning jobs (:mod:`ragtune.jobs.sqlite`): a worker *claims* a task and
gets an attempt token and a lease; a heartbeat renews the lease; a worker that dies stops
renewing it and another claims the task once the lease has run out; only the holder of the
current attempt token can record progress or finish the task (exactly once).

The table is new and separate (``tasks``), so the fine-tuning job table is unchanged. One
class serves both backends: SQLite (the service database file, beside the job table) and
PostgreSQL (``RAGTUNE_DATABASE_URL``; the table comes with schema migration 4). Their SQL
is the same apart from the placeholder, the clock expression and, in PostgreSQL,
``FOR UPDATE SKIP LOCKED`` on the claim, so two claimers never take the same task. Leases
are measured on the database's clock. Every read and change of a tenant's task matches its
``project`` in the query.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ragtune.jobs.store import JobError, dumps, loads

TaskKind = Literal["comparison", "make_qa", "train_node"]
TaskStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TASK_TERMINAL: tuple[TaskStatus, ...] = ("succeeded", "failed", "cancelled")

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL, project TEXT NOT NULL, kind TEXT NOT NULL,
    created_at INTEGER NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
    progress TEXT, error TEXT, result TEXT, finished_at INTEGER,
    attempt TEXT, worker TEXT, attempts INTEGER NOT NULL DEFAULT 0, lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_project ON tasks (project, kind, seq);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status, seq);
"""
_COLUMNS = (
    "id, project, kind, created_at, spec, status, progress, error, result, finished_at, "
    "attempt, attempts, lease_until, cancel_requested"
)


@dataclass(frozen=True)
class TaskRecord:
    """A task as stored. ``spec`` is the request as validated at creation; ``progress`` is
    ``{stage, fraction, message}`` while it runs; ``result`` what it produced."""

    id: str
    project: str
    kind: TaskKind
    created_at: int
    spec: dict[str, Any]
    status: TaskStatus = "queued"
    progress: dict[str, Any] | None = None
    error: JobError | None = None
    result: dict[str, Any] | None = None
    finished_at: int | None = None
    attempt: str | None = None
    attempts: int = 0
    lease_until: float | None = None
    cancel_requested: bool = False


@dataclass(frozen=True)
class TaskClaim:
    """A task a worker now holds: only the holder of ``attempt`` may change it."""

    task: TaskRecord
    attempt: str


def new_task_id(kind: TaskKind) -> str:
    prefix = {"comparison": "cmp", "make_qa": "qajob", "train_node": "node"}[kind]
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class TaskDB:
    """The ``tasks`` table in SQLite (:meth:`sqlite`) or PostgreSQL (:meth:`postgres`)."""

    def __init__(
        self,
        connect: Callable[[bool], contextlib.AbstractContextManager[Any]],
        postgres: bool,
    ) -> None:
        self._connect = connect
        self._pg = postgres
        self._now = "extract(epoch from clock_timestamp())" if postgres else _SQLITE_NOW

    @classmethod
    def sqlite(cls, path: Path) -> TaskDB:
        from ragtune.jobs.vector_stores import open_tables

        tx = open_tables(Path(path), SQLITE_SCHEMA)
        return cls(lambda immediate: tx(immediate=immediate), postgres=False)

    @classmethod
    def postgres(cls, url: str) -> TaskDB:
        import psycopg
        from psycopg.types.string import TextLoader

        from ragtune.jobs.migrations import migrate

        migrate(url)

        @contextlib.contextmanager
        def connect(immediate: bool) -> Iterator[Any]:
            with psycopg.connect(url) as conn:  # commits on success, rolls back on error
                conn.adapters.register_loader("jsonb", TextLoader)
                yield conn

        return cls(connect, postgres=True)

    def _sql(self, sql: str) -> Any:
        return sql.replace("?", "%s").encode() if self._pg else sql

    # --- the API side ----------------------------------------------------------------------

    def add(self, task: TaskRecord) -> None:
        with self._connect(False) as db:
            db.execute(
                self._sql(f"INSERT INTO tasks ({_COLUMNS}) VALUES ({', '.join('?' * 14)})"),
                _row(task),
            )

    def get(self, project: str, kind: TaskKind, task_id: str) -> TaskRecord | None:
        with self._connect(False) as db:
            row = db.execute(
                self._sql(
                    f"SELECT {_COLUMNS} FROM tasks WHERE project = ? AND kind = ? AND id = ?"
                ),
                (project, kind, task_id),
            ).fetchone()
        return _task(row) if row else None

    def list(
        self, project: str, kind: TaskKind, after: str | None, limit: int
    ) -> tuple[list[TaskRecord], bool]:
        """Newest first, ``limit`` after the task ``after`` (an unknown cursor: none)."""
        where = "project = ? AND kind = ?"
        args: list[Any] = [project, kind]
        sql = f"SELECT {_COLUMNS} FROM tasks WHERE {where}"
        if after is not None:  # an unknown cursor matches nothing (seq compared with NULL)
            sql += f" AND seq < (SELECT seq FROM tasks WHERE {where} AND id = ?)"
            args += [project, kind, after]
        sql += " ORDER BY seq DESC LIMIT ?"
        with self._connect(False) as db:
            rows = db.execute(self._sql(sql), [*args, limit + 1]).fetchall()
        return [_task(r) for r in rows[:limit]], len(rows) > limit

    def count_waiting(self) -> int:
        with self._connect(False) as db:
            row = db.execute("SELECT count(*) FROM tasks WHERE status = 'queued'").fetchone()
        return int(row[0]) if row else 0

    def request_cancel(self, project: str, kind: TaskKind, task_id: str) -> TaskRecord | None:
        """Cancel a task: at once when no worker holds it, else the holder stops at its next
        stage (the task stays ``running`` until then)."""
        lock = " FOR UPDATE" if self._pg else ""
        with self._connect(True) as db:
            row = db.execute(
                self._sql(
                    f"SELECT {_COLUMNS} FROM tasks WHERE project = ? AND kind = ? AND id = ?{lock}"
                ),
                (project, kind, task_id),
            ).fetchone()
            if row is None:
                return None
            task = _task(row)
            if task.status in TASK_TERMINAL:
                return task
            if task.attempt is None:
                db.execute(
                    self._sql(
                        "UPDATE tasks SET status = 'cancelled', finished_at = ?, "
                        "cancel_requested = 1, progress = NULL WHERE id = ?"
                    ),
                    (int(time.time()), task_id),
                )
            else:
                db.execute(
                    self._sql("UPDATE tasks SET cancel_requested = 1 WHERE id = ?"), (task_id,)
                )
            row = db.execute(
                self._sql(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?"), (task_id,)
            ).fetchone()
        return _task(row)

    # --- the worker side -------------------------------------------------------------------

    def claim(self, worker: str, lease_s: float) -> TaskClaim | None:
        """Take the oldest queued task, or a running one whose holder's lease ran out."""
        skip = " FOR UPDATE SKIP LOCKED" if self._pg else ""
        with self._connect(True) as db:
            row = db.execute(
                self._sql(
                    f"SELECT {_COLUMNS} FROM tasks WHERE status IN ('queued', 'running') "
                    f"AND (attempt IS NULL OR lease_until IS NULL OR lease_until < {self._now}) "
                    f"ORDER BY seq LIMIT 1{skip}"
                )
            ).fetchone()
            if row is None:
                return None
            task = _task(row)
            attempt = uuid.uuid4().hex
            db.execute(
                self._sql(
                    f"UPDATE tasks SET attempt = ?, worker = ?, lease_until = {self._now} + ?, "
                    "status = 'running', attempts = attempts + 1 WHERE id = ?"
                ),
                (attempt, worker, lease_s, task.id),
            )
            row = db.execute(
                self._sql(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?"), (task.id,)
            ).fetchone()
        return TaskClaim(_task(row), attempt)

    def heartbeat(self, task_id: str, attempt: str, lease_s: float) -> bool:
        with self._connect(False) as db:
            cur = db.execute(
                self._sql(
                    f"UPDATE tasks SET lease_until = {self._now} + ? WHERE id = ? AND attempt = ?"
                ),
                (lease_s, task_id, attempt),
            )
        return bool(cur.rowcount == 1)

    def should_stop(self, task_id: str, attempt: str) -> bool:
        """True when the task was cancelled or another attempt holds it now."""
        with self._connect(False) as db:
            row = db.execute(
                self._sql("SELECT cancel_requested, attempt FROM tasks WHERE id = ?"), (task_id,)
            ).fetchone()
        return row is None or bool(row[0]) or row[1] != attempt

    def set_progress(self, task_id: str, attempt: str, progress: dict[str, Any]) -> bool:
        with self._connect(False) as db:
            cur = db.execute(
                self._sql("UPDATE tasks SET progress = ? WHERE id = ? AND attempt = ?"),
                (dumps(progress), task_id, attempt),
            )
        return bool(cur.rowcount == 1)

    def finish(
        self,
        task_id: str,
        attempt: str,
        status: TaskStatus,
        error: JobError | None = None,
        result: dict[str, Any] | None = None,
    ) -> bool:
        """Move the task to ``status`` and release it, only if ``attempt`` still holds it;
        ``queued`` puts it back for another worker (a worker shutting down)."""
        terminal = status in TASK_TERMINAL
        with self._connect(True) as db:
            cur = db.execute(
                self._sql(
                    "UPDATE tasks SET status = ?, error = ?, result = ?, finished_at = ?, "
                    "attempt = NULL, lease_until = NULL WHERE id = ? AND attempt = ?"
                ),
                (
                    status,
                    dumps(_error_dict(error)),
                    dumps(result),
                    int(time.time()) if terminal else None,
                    task_id,
                    attempt,
                ),
            )
        return bool(cur.rowcount == 1)


_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


def _error_dict(e: JobError | None) -> dict[str, Any] | None:
    return None if e is None else {"code": e.code, "message": e.message, "param": e.param}


def _row(t: TaskRecord) -> tuple[Any, ...]:
    return (
        t.id,
        t.project,
        t.kind,
        t.created_at,
        dumps(t.spec),
        t.status,
        dumps(t.progress),
        dumps(_error_dict(t.error)),
        dumps(t.result),
        t.finished_at,
        t.attempt,
        t.attempts,
        t.lease_until,
        int(t.cancel_requested),
    )


def _task(r: Sequence[Any]) -> TaskRecord:
    err = loads(r[7])
    return TaskRecord(
        id=r[0],
        project=r[1],
        kind=r[2],
        created_at=int(r[3]),
        spec=loads(r[4]),
        status=r[5],
        progress=loads(r[6]),
        error=JobError(**err) if err else None,
        result=loads(r[8]),
        finished_at=r[9],
        attempt=r[10],
        attempts=int(r[11]),
        lease_until=r[12],
        cancel_requested=bool(r[13]),
    )


def open_tasks(database: Path) -> TaskDB:
    """The task table of the configured backend: PostgreSQL when ``RAGTUNE_DATABASE_URL`` is
    set (as :func:`ragtune.jobs.backend.open_backend` chooses), else the SQLite file."""
    import os

    url = os.environ.get("RAGTUNE_DATABASE_URL")
    return TaskDB.postgres(url) if url else TaskDB.sqlite(database)
