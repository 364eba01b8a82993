"""``ragtune migrate --to postgresql://…``: copy an embedded installation into PostgreSQL --
the SQLite file's files, jobs, job events and vector-store tables (stores, files, batches),
the API keys file, and every knowledge base's manifest, documents, chunks and vectors -- and,
with an artefact store given, every stored object (uploads, result files); then read
everything back and compare counts and content checksums.

A checksum is the SHA-256 of the records in their stored order, each as canonical JSON, so
equal checksums mean equal content on both sides: ids, texts, metadata, the bytes of every
vector (float32) and of every object. With an artefact store, fine-tuning run folders
(RAGTUNE_HOME/serve/runs) are copied there too (:mod:`ragtune.jobs.run_store`): a finished run
whole, an unfinished one as its newest checkpoint, which a worker on any host resumes from.
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
        return [_copy_keys(settings, url)]
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
        *_copy_tables(settings, url),
        _copy_tasks(settings, url),
        _copy_keys(settings, url),
    ]


def _vector_store_tables() -> dict[str, str]:
    from ragtune.jobs.vector_stores import _FILE_COLUMNS, _STORE_COLUMNS

    return {
        "vector_stores": _STORE_COLUMNS,
        "vector_store_files": _FILE_COLUMNS + ", attempt, lease_until",
        "vector_store_file_batches": "id, vector_store_id, project, created_at, cancelled",
    }


def _copy_tables(settings: ServiceSettings, url: str) -> list[TableReport]:
    """The vector store tables, row by row in their order (every column but ``seq``)."""
    import psycopg

    from ragtune.jobs.vector_stores import VectorStoreDB

    VectorStoreDB(settings.database)  # creates the tables in an installation that has none
    reports = []
    src = sqlite3.connect(settings.database)
    try:
        with psycopg.connect(url) as conn:
            for table, columns in _vector_store_tables().items():
                query = f"SELECT {columns} FROM {table} ORDER BY seq"
                rows = [list(r) for r in src.execute(query)]
                marks = ", ".join(["%s"] * (columns.count(",") + 1))
                with conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO {table} ({columns}) VALUES ({marks})".encode(), rows
                    )
                got = [list(r) for r in conn.execute(query.encode())]
                reports.append(_report(table, rows, got))
    finally:
        src.close()
    return reports


def _copy_tasks(settings: ServiceSettings, url: str) -> TableReport:
    """Comparisons and training-data generations (``tasks``), in their order."""
    from ragtune.jobs.tasks import _COLUMNS, TaskDB, _row, _task

    TaskDB.sqlite(settings.database)  # creates the table in an installation that has none
    target = TaskDB.postgres(url)
    query = f"SELECT {_COLUMNS} FROM tasks ORDER BY seq"
    src = sqlite3.connect(settings.database)
    try:
        tasks = [_task(r) for r in src.execute(query)]
    finally:
        src.close()
    for t in tasks:
        target.add(t)
    with target._connect(False) as conn:
        got = [_task(r) for r in conn.execute(query.encode())]
    return _report("tasks", [_row(t) for t in tasks], [_row(t) for t in got])


def _copy_keys(settings: ServiceSettings, url: str) -> TableReport:
    """The keys file's hashes into ``api_keys`` (keys given in RAGTUNE_API_KEYS are not
    stored anywhere, so they are not moved: set the same variable on the new servers)."""
    import psycopg

    from ragtune.jobs.keys import read_keys_file
    from ragtune.jobs.postgres import PgKeyTable

    keys = sorted(read_keys_file(settings.keys_file).items())
    table = PgKeyTable(url)
    for sha, project in keys:
        table.add_key(sha, project)
    with psycopg.connect(url) as conn:
        got = conn.execute("SELECT sha256, project FROM api_keys ORDER BY sha256").fetchall()
    return _report("api_keys", [list(k) for k in keys], [list(k) for k in got])


def migrate_objects(settings: ServiceSettings, artifacts: str) -> list[TableReport]:
    """Every object of the local object folder (uploads, result files) into the artefact
    store at ``artifacts`` (``file:///…`` or ``s3://…``), compared by each object's SHA-256."""
    from ragtune.jobs.artifacts import FsspecObjectStore
    from ragtune.jobs.objects import LocalObjectStore

    if not settings.objects.is_dir():
        return []
    src = LocalObjectStore(settings.objects)
    dst = FsspecObjectStore(artifacts, settings.home / "artifact-cache")
    keys = sorted(p.name for p in settings.objects.iterdir() if p.is_file())
    for key in keys:
        dst.put_stream(key, src.open(key), limit=2**62)

    def digests(store: LocalObjectStore | FsspecObjectStore) -> list[list[str]]:
        out = []
        for key in keys:
            if store.exists(key):
                h = hashlib.sha256()
                for block in store.open(key):
                    h.update(block)
                out.append([key, h.hexdigest()])
        return out

    return [_report("objects", digests(src), digests(dst))]


def migrate_runs(settings: ServiceSettings, artifacts: str) -> list[TableReport]:
    """Every run folder into the artefact store: a finished run published whole, an
    unfinished one as its checkpoints; compared by each file's SHA-256, the target's computed
    from the stored bytes."""
    from ragtune.io import file_sha256
    from ragtune.jobs.run_store import RunStore, is_finished, model_files
    from ragtune.tune.checkpoint import list_checkpoints

    if not settings.runs.is_dir():
        return []
    store = RunStore(artifacts)
    source: list[list[str]] = []
    target: list[list[str]] = []
    for run_dir in sorted(settings.runs.iterdir()):
        if not run_dir.is_dir() or run_dir.name.startswith("."):  # fetches under way
            continue
        job_id = run_dir.name
        found = list_checkpoints(run_dir / "checkpoints")
        if is_finished(run_dir):
            if store.published(job_id) is None:
                store.publish(job_id, run_dir)
            rels = model_files(run_dir) + [f"checkpoints/{p.name}" for p in found]
        elif found:
            store.mirror_checkpoints(job_id, run_dir)
            rels = [f"checkpoints/{found[-1].name}"]
            rels += ["events.jsonl"] if (run_dir / "events.jsonl").exists() else []
        else:
            continue  # a run that never saved a checkpoint has nothing to resume from
        source += [[job_id, rel, file_sha256(run_dir / rel)] for rel in sorted(rels)]
        target += [[job_id, rel, sha] for rel, sha in store.stored_files(job_id)]
    return [_report("runs", source, target)]


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
        reports.append(
            _report(
                f"kb:{name}:chunks",
                _with_vectors(src_store.get_chunks(src_ids), _lance_vectors(src_store)),
                _with_vectors(store.get_chunks(src_ids), _pg_vectors(url, name)),
            )
        )
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


def _with_vectors(chunks: Sequence[Any], vectors: dict[str, bytes]) -> list[Any]:
    """Each chunk's fields and the SHA-256 of its float32 vector's bytes."""
    return [
        {**c.to_dict(), "vector_sha256": hashlib.sha256(vectors.get(c.chunk_id, b"")).hexdigest()}
        for c in chunks
    ]


def _lance_vectors(store: Any) -> dict[str, bytes]:
    import numpy as np

    table = store.chunks.to_lance().to_table(columns=["chunk_id", "vector"]).to_pydict()
    return {
        c: np.asarray(v, dtype=np.float32).tobytes()
        for c, v in zip(table["chunk_id"], table["vector"], strict=True)
    }


def _pg_vectors(url: str, kb: str) -> dict[str, bytes]:
    import numpy as np
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(url) as conn:
        register_vector(conn)
        rows = conn.execute(
            "SELECT chunk_id, embedding FROM kb_chunks WHERE kb = %s", (kb,)
        ).fetchall()
    return {c: np.asarray(v.to_numpy(), dtype=np.float32).tobytes() for c, v in rows}
