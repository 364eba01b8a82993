"""Vector stores, their files and file batches, in the service's SQLite database.

A vector store file is also its own ingestion job: a row ``in_progress`` waits for a worker,
which claims it with an attempt token and a lease (as fine-tuning jobs are claimed), ingests
the file into the store's knowledge base and marks it ``completed`` or ``failed`` -- only if
its attempt still holds the row, so a file completes exactly once even when a worker dies
half-way and another one takes over. A deleted file leaves the API (and search) at once;
its row stays with ``deleted = 1`` until a worker has removed its chunks from the index.

Every method that reads or changes a tenant's object takes its ``project`` and matches it in
the query itself.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from ragtune.jobs.sqlite import SqliteDB, page
from ragtune.jobs.store import dumps, loads
from ragtune.jobs.vector_store_records import (
    Attributes,
    BatchRecord,
    FileCounts,
    IngestClaim,
    VectorStoreRecord,
    VSFileRecord,
    VSFileStatus,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vector_stores (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL,
    created_at INTEGER NOT NULL, last_active_at INTEGER NOT NULL, metadata TEXT,
    expires_after TEXT, chunk_tokens INTEGER NOT NULL, chunk_overlap INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS vector_stores_project ON vector_stores (project, seq);
CREATE TABLE IF NOT EXISTS vector_store_files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    vector_store_id TEXT NOT NULL, file_id TEXT NOT NULL, project TEXT NOT NULL,
    filename TEXT NOT NULL, object_key TEXT NOT NULL, created_at INTEGER NOT NULL,
    status TEXT NOT NULL, last_error TEXT, usage_bytes INTEGER NOT NULL DEFAULT 0,
    attributes TEXT, batch_id TEXT, doc_id TEXT,
    attempt TEXT, lease_until REAL, attempts INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    UNIQUE (vector_store_id, file_id)
);
CREATE INDEX IF NOT EXISTS vector_store_files_store ON vector_store_files (vector_store_id, seq);
CREATE TABLE IF NOT EXISTS vector_store_file_batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL, vector_store_id TEXT NOT NULL, project TEXT NOT NULL,
    created_at INTEGER NOT NULL, cancelled INTEGER NOT NULL DEFAULT 0
);
"""
_STORE_COLUMNS = (
    "id, project, name, created_at, last_active_at, metadata, expires_after, chunk_tokens, "
    "chunk_overlap"
)
_FILE_COLUMNS = (
    "vector_store_id, file_id, project, filename, object_key, created_at, status, last_error, "
    "usage_bytes, attributes, batch_id, doc_id, attempts, deleted"
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def open_tables(path: Path, schema: str) -> Callable[..., Any]:
    """Create ``schema``'s tables in the service database at ``path`` (beside the job table,
    with its connection rules) and return its transaction context manager."""
    jobs = SqliteDB(path)
    db = sqlite3.connect(path, timeout=30)
    try:
        db.executescript(schema)
        db.commit()
    finally:
        db.close()
    return jobs._connect


class VectorStoreDB:
    """The vector store tables, beside the job table in the same SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._connect = open_tables(self.path, _SCHEMA)

    # --- stores --------------------------------------------------------------------------

    def add_store(self, store: VectorStoreRecord) -> None:
        with self._connect() as db:
            db.execute(
                f"INSERT INTO vector_stores ({_STORE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    store.id,
                    store.project,
                    store.name,
                    store.created_at,
                    store.last_active_at,
                    dumps(store.metadata),
                    dumps(store.expires_after),
                    store.chunk_tokens,
                    store.chunk_overlap,
                ),
            )

    def get_store(self, project: str, store_id: str) -> VectorStoreRecord | None:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_STORE_COLUMNS} FROM vector_stores WHERE project = ? AND id = ?",
                (project, store_id),
            ).fetchone()
        return _store(row) if row else None

    def list_stores(
        self, project: str, after: str | None, limit: int, order: Literal["asc", "desc"]
    ) -> tuple[list[VectorStoreRecord], bool]:
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {_STORE_COLUMNS} FROM vector_stores WHERE project = ? "
                f"ORDER BY seq {'ASC' if order == 'asc' else 'DESC'}",
                (project,),
            ).fetchall()
        stores = [_store(r) for r in rows]
        return page(stores, [s.id for s in stores], after, limit)

    def update_store(self, project: str, store_id: str, values: dict[str, Any]) -> bool:
        allowed = {"name", "metadata", "expires_after", "last_active_at"}
        if set(values) - allowed:
            raise ValueError(f"not updatable: {sorted(set(values) - allowed)}")
        if not values:
            return self.get_store(project, store_id) is not None
        sets = ", ".join(f"{k} = ?" for k in values)
        args = [dumps(v) if k in ("metadata", "expires_after") else v for k, v in values.items()]
        with self._connect() as db:
            cur = db.execute(
                f"UPDATE vector_stores SET {sets} WHERE project = ? AND id = ?",
                (*args, project, store_id),
            )
        return cur.rowcount == 1

    def delete_store(self, project: str, store_id: str) -> bool:
        with self._connect(immediate=True) as db:
            cur = db.execute(
                "DELETE FROM vector_stores WHERE project = ? AND id = ?", (project, store_id)
            )
            if cur.rowcount != 1:
                return False
            db.execute("DELETE FROM vector_store_files WHERE vector_store_id = ?", (store_id,))
            db.execute(
                "DELETE FROM vector_store_file_batches WHERE vector_store_id = ?", (store_id,)
            )
        return True

    def file_counts(self, store_id: str, batch_id: str | None = None) -> tuple[FileCounts, int]:
        """Counts by status and the bytes of completed files (deleted files left out)."""
        sql = (
            "SELECT status, COUNT(*), SUM(CASE WHEN status = 'completed' THEN usage_bytes "
            "ELSE 0 END) FROM vector_store_files WHERE vector_store_id = ? AND deleted = 0"
        )
        args: list[Any] = [store_id]
        if batch_id is not None:
            sql += " AND batch_id = ?"
            args.append(batch_id)
        with self._connect() as db:
            rows = db.execute(sql + " GROUP BY status", args).fetchall()
        counts = {status: n for status, n, _ in rows}
        usage = sum(int(b or 0) for _, _, b in rows)
        return (
            FileCounts(
                in_progress=counts.get("in_progress", 0),
                completed=counts.get("completed", 0),
                failed=counts.get("failed", 0),
                cancelled=counts.get("cancelled", 0),
            ),
            usage,
        )

    # --- files ---------------------------------------------------------------------------

    def add_files(self, files: Sequence[VSFileRecord]) -> None:
        """Attach files (re-attaching a file already in the store replaces its row)."""
        with self._connect(immediate=True) as db:
            for f in files:
                db.execute(
                    "DELETE FROM vector_store_files WHERE vector_store_id = ? AND file_id = ? "
                    "AND deleted = 0",
                    (f.vector_store_id, f.file_id),
                )
                db.execute(
                    "UPDATE vector_store_files SET file_id = file_id || ':deleted:' || seq "
                    "WHERE vector_store_id = ? AND file_id = ? AND deleted = 1",
                    (f.vector_store_id, f.file_id),
                )
                db.execute(
                    f"INSERT INTO vector_store_files ({_FILE_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _file_row(f),
                )

    def get_file(self, project: str, store_id: str, file_id: str) -> VSFileRecord | None:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM vector_store_files WHERE project = ? "
                "AND vector_store_id = ? AND file_id = ? AND deleted = 0",
                (project, store_id, file_id),
            ).fetchone()
        return _vsfile(row) if row else None

    def list_files(
        self,
        project: str,
        store_id: str,
        after: str | None,
        limit: int,
        order: Literal["asc", "desc"],
        status: str | None = None,
        batch_id: str | None = None,
    ) -> tuple[list[VSFileRecord], bool]:
        files = self.store_files(project, store_id, status, batch_id)
        if order == "desc":
            files.reverse()
        return page(files, [f.file_id for f in files], after, limit)

    def store_files(
        self,
        project: str,
        store_id: str,
        status: str | None = None,
        batch_id: str | None = None,
    ) -> list[VSFileRecord]:
        """The store's (not deleted) files, oldest first."""
        sql = (
            f"SELECT {_FILE_COLUMNS} FROM vector_store_files WHERE project = ? "
            "AND vector_store_id = ? AND deleted = 0"
        )
        args: list[Any] = [project, store_id]
        if status:
            sql += " AND status = ?"
            args.append(status)
        if batch_id:
            sql += " AND batch_id = ?"
            args.append(batch_id)
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY seq", args).fetchall()
        return [_vsfile(r) for r in rows]

    def update_attributes(
        self, project: str, store_id: str, file_id: str, attributes: Attributes | None
    ) -> bool:
        with self._connect() as db:
            cur = db.execute(
                "UPDATE vector_store_files SET attributes = ? WHERE project = ? "
                "AND vector_store_id = ? AND file_id = ? AND deleted = 0",
                (dumps(attributes), project, store_id, file_id),
            )
        return cur.rowcount == 1

    def delete_file(self, project: str, store_id: str, file_id: str) -> bool:
        """Detach a file: gone from the API and from search now; a worker drops its chunks."""
        with self._connect() as db:
            cur = db.execute(
                "UPDATE vector_store_files SET deleted = 1, attempt = NULL, lease_until = NULL "
                "WHERE project = ? AND vector_store_id = ? AND file_id = ? AND deleted = 0",
                (project, store_id, file_id),
            )
        return cur.rowcount == 1

    # --- batches -------------------------------------------------------------------------

    def add_batch(self, batch: BatchRecord) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO vector_store_file_batches (id, vector_store_id, project, "
                "created_at, cancelled) VALUES (?, ?, ?, ?, ?)",
                (
                    batch.id,
                    batch.vector_store_id,
                    batch.project,
                    batch.created_at,
                    int(batch.cancelled),
                ),
            )

    def get_batch(self, project: str, store_id: str, batch_id: str) -> BatchRecord | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT id, vector_store_id, project, created_at, cancelled FROM "
                "vector_store_file_batches WHERE project = ? AND vector_store_id = ? AND id = ?",
                (project, store_id, batch_id),
            ).fetchone()
        return BatchRecord(row[0], row[1], row[2], row[3], bool(row[4])) if row else None

    def cancel_batch(self, project: str, store_id: str, batch_id: str) -> bool:
        """Cancel the batch's files no worker has started yet."""
        with self._connect(immediate=True) as db:
            cur = db.execute(
                "UPDATE vector_store_file_batches SET cancelled = 1 WHERE project = ? "
                "AND vector_store_id = ? AND id = ?",
                (project, store_id, batch_id),
            )
            if cur.rowcount != 1:
                return False
            db.execute(
                "UPDATE vector_store_files SET status = 'cancelled' WHERE batch_id = ? "
                "AND status = 'in_progress' AND attempt IS NULL AND deleted = 0",
                (batch_id,),
            )
        return True

    # --- the worker side -----------------------------------------------------------------

    # The database's clock in unix seconds (leases are measured on it, so hosts with skewed
    # clocks agree) and what a claim adds to its row locks; PostgreSQL overrides both.
    _NOW = "((julianday('now') - 2440587.5) * 86400.0)"
    _SKIP_LOCKED = ""

    def claim_ingest(self, lease_s: float, limit: int = 256) -> IngestClaim | None:
        """Take the oldest file waiting for ingestion or for removal from its index, with
        up to ``limit`` files of the same store waiting for the same (one ingest run)."""
        free = f"(attempt IS NULL OR lease_until IS NULL OR lease_until < {self._NOW})"
        with self._connect(immediate=True) as db:
            first = db.execute(
                "SELECT vector_store_id, deleted FROM vector_store_files "
                f"WHERE (status = 'in_progress' OR deleted = 1) AND {free} ORDER BY seq LIMIT 1"
                + self._SKIP_LOCKED
            ).fetchone()
            if first is None:
                return None
            store_id, deleted = first
            waiting = "deleted = 1" if deleted else "status = 'in_progress' AND deleted = 0"
            rows = db.execute(
                f"SELECT {_FILE_COLUMNS}, seq FROM vector_store_files WHERE "
                f"vector_store_id = ? AND {waiting} AND {free} ORDER BY seq LIMIT ?"
                + self._SKIP_LOCKED,
                (store_id, limit),
            ).fetchall()
            attempt = uuid.uuid4().hex
            db.executemany(
                f"UPDATE vector_store_files SET attempt = ?, lease_until = {self._NOW} + ?, "
                "attempts = attempts + 1 WHERE seq = ?",
                [(attempt, lease_s, r[-1]) for r in rows],
            )
            store_row = db.execute(
                f"SELECT {_STORE_COLUMNS} FROM vector_stores WHERE id = ?", (store_id,)
            ).fetchone()
        files = [_vsfile(r[:-1]) for r in rows]
        store = _store(store_row) if store_row else None
        return IngestClaim(files, store, attempt, bool(deleted))

    def heartbeat_ingest(self, claim: IngestClaim, lease_s: float) -> bool:
        with self._connect() as db:
            cur = db.execute(
                f"UPDATE vector_store_files SET lease_until = {self._NOW} + ? "
                "WHERE vector_store_id = ? AND attempt = ?",
                (lease_s, claim.store_id, claim.attempt),
            )
        return cur.rowcount > 0

    def release_ingest(self, claim: IngestClaim) -> None:
        """Give the files back to the queue untouched (their index was busy)."""
        with self._connect() as db:
            db.execute(
                "UPDATE vector_store_files SET attempt = NULL, lease_until = NULL "
                "WHERE vector_store_id = ? AND attempt = ?",
                (claim.store_id, claim.attempt),
            )

    def finish_ingest(
        self,
        claim: IngestClaim,
        file_id: str,
        status: VSFileStatus,
        doc_id: str | None,
        usage_bytes: int,
        last_error: dict[str, str] | None = None,
    ) -> bool:
        """Record a file's outcome, only if ``claim`` still holds it (exactly once)."""
        with self._connect(immediate=True) as db:
            cur = db.execute(
                "UPDATE vector_store_files SET status = ?, doc_id = ?, usage_bytes = ?, "
                "last_error = ?, attempt = NULL, lease_until = NULL WHERE vector_store_id = ? "
                "AND file_id = ? AND attempt = ? AND deleted = 0 AND status = 'in_progress'",
                (
                    status,
                    doc_id,
                    usage_bytes,
                    dumps(last_error),
                    claim.store_id,
                    file_id,
                    claim.attempt,
                ),
            )
        return cur.rowcount == 1

    def purged(self, claim: IngestClaim) -> int:
        """The claimed deleted files' chunks are gone from the index: drop their rows."""
        with self._connect() as db:
            cur = db.execute(
                "DELETE FROM vector_store_files WHERE vector_store_id = ? AND attempt = ? "
                "AND deleted = 1",
                (claim.store_id, claim.attempt),
            )
        return cur.rowcount


def _store(r: Sequence[Any]) -> VectorStoreRecord:
    return VectorStoreRecord(
        id=r[0],
        project=r[1],
        name=r[2],
        created_at=r[3],
        last_active_at=r[4],
        metadata=loads(r[5]),
        expires_after=loads(r[6]),
        chunk_tokens=r[7],
        chunk_overlap=r[8],
    )


def _file_row(f: VSFileRecord) -> tuple[Any, ...]:
    return (
        f.vector_store_id,
        f.file_id,
        f.project,
        f.filename,
        f.object_key,
        f.created_at,
        f.status,
        dumps(f.last_error),
        f.usage_bytes,
        dumps(f.attributes),
        f.batch_id,
        f.doc_id,
        f.attempts,
        int(f.deleted),
    )


def _vsfile(r: Sequence[Any]) -> VSFileRecord:
    return VSFileRecord(
        vector_store_id=r[0],
        file_id=r[1],
        project=r[2],
        filename=r[3],
        object_key=r[4],
        created_at=r[5],
        status=r[6],
        last_error=loads(r[7]),
        usage_bytes=r[8],
        attributes=loads(r[9]),
        batch_id=r[10],
        doc_id=r[11],
        attempts=r[12],
        deleted=bool(r[13]),
    )
