"""``ragtune migrate --to postgresql://…``: copy an embedded installation (the SQLite file,
job and event tables, and every knowledge base's documents, chunks and vectors) into
PostgreSQL, then read everything back and compare counts and content checksums.

A checksum is the SHA-256 of the records in their stored order, each as canonical JSON, so
equal checksums mean equal content (ids, texts, metadata, vectors' chunk ids) on both sides.
Object bytes (uploads, runs, models) stay where they are, under RAGTUNE_HOME or at
RAGTUNE_ARTIFACTS; vector-store tables are not moved yet.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ragtune.config import ragtune_home
from ragtune.jobs.settings import ServiceSettings


@dataclass(frozen=True)
class TableReport:
    name: str
    source_count: int
    target_count: int
    source_sha256: str
    target_sha256: str

    @property
    def ok(self) -> bool:
        return (self.source_count, self.source_sha256) == (self.target_count, self.target_sha256)


def checksum(records: Iterable[Any]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def _report(name: str, source: Sequence[Any], target: Sequence[Any]) -> TableReport:
    return TableReport(name, len(source), len(target), checksum(source), checksum(target))


def migrate_service(settings: ServiceSettings, url: str) -> list[TableReport]:
    """Files, jobs and job events from the SQLite file into the database at ``url``."""
    import psycopg

    from ragtune.jobs.postgres import PostgresDB
    from ragtune.jobs.sqlite import _FILE_COLUMNS, _JOB_COLUMNS, SqliteDB, _file, _job
    from ragtune.jobs.store import JobEvent, loads

    if not settings.database.exists():
        return []
    SqliteDB(settings.database)  # brings an older file to the current schema
    target = PostgresDB(url)
    events_sql = "SELECT id, job_id, created_at, level, message, type, data, at FROM job_events"
    src = sqlite3.connect(settings.database)
    try:
        files = [_file(r) for r in src.execute(f"SELECT {_FILE_COLUMNS} FROM files ORDER BY seq")]
        jobs = [_job(r) for r in src.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY seq")]
        events = [
            JobEvent(r[0], r[1], r[2], r[3], r[4], r[5], loads(r[6]), r[7])
            for r in src.execute(events_sql + " ORDER BY seq")
        ]
    finally:
        src.close()
    for f in files:
        target.add_file(f)
    for j in jobs:
        target.add_job(j)
    for e in events:
        target.add_event(e)
    with psycopg.connect(url) as conn:
        from psycopg.types.string import TextLoader

        conn.adapters.register_loader("jsonb", TextLoader)
        got_files = [
            _file(r) for r in conn.execute(f"SELECT {_FILE_COLUMNS} FROM files ORDER BY seq")
        ]
        got_jobs = [_job(r) for r in conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY seq")]
        got_events = [
            JobEvent(r[0], r[1], r[2], r[3], r[4], r[5], loads(r[6]), r[7])
            for r in conn.execute((events_sql + " ORDER BY seq").encode())
        ]
    return [
        _report("files", [asdict(f) for f in files], [asdict(f) for f in got_files]),
        _report("jobs", [asdict(j) for j in jobs], [asdict(j) for j in got_jobs]),
        _report("job_events", [asdict(e) for e in events], [asdict(e) for e in got_events]),
    ]


def migrate_knowledge_bases(url: str) -> list[TableReport]:
    """Every knowledge base under RAGTUNE_HOME/kb into PostgreSQL (PgStore), its manifest
    published there (backend ``postgresql``) once its chunks are in."""

    from ragtune.jobs.migrations import migrate
    from ragtune.retrieve.kb import read_manifest
    from ragtune.retrieve.pgstore import PgStore, copy_lance_store
    from ragtune.retrieve.store import LanceStore

    migrate(url)
    reports = []
    root = ragtune_home() / "kb"
    for path in sorted(root.glob("*/manifest.json")) if root.exists() else []:
        name = path.parent.name
        manifest = read_manifest(path.parent, name)
        src_store = LanceStore(path.parent, int(manifest["embedder"]["dim"]), manifest["store"])
        store = PgStore(url, name, src_store.dim, fresh=True)
        copy_lance_store(src_store, store)
        store.commit({**manifest, "backend": "postgresql"})
        src_ids = list(src_store.keywords.chunk_ids)
        src = [c.to_dict() for c in src_store.get_chunks(src_ids)]
        dst = [c.to_dict() for c in store.get_chunks(src_ids)]
        reports.append(_report(f"kb:{name}:chunks", src, dst))
        docs = sorted(src_store.doc_index())
        reports.append(
            _report(
                f"kb:{name}:documents",
                [d.to_dict() for d in map(src_store.get_document, docs) if d],
                [d.to_dict() for d in map(store.get_document, docs) if d],
            )
        )
        store.close()
    return reports
