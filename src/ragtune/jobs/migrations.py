"""Versioned schema migrations of the PostgreSQL backend, applied on start.

Each migration is a version number and the SQL that takes the schema from the previous version
to it. :func:`migrate` applies the ones a database lacks, in order, in one transaction,
under a transaction-level advisory lock so two servers starting at once never both apply one.
A migration once released is never edited; a change is a new, higher version.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

# An arbitrary constant: the advisory lock key that serialises migrations.
_LOCK_KEY = 0x7261677475  # "ragtu"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "files, jobs and job events",
        """
CREATE TABLE files (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL, project TEXT NOT NULL, filename TEXT NOT NULL,
    purpose TEXT NOT NULL, bytes BIGINT NOT NULL, created_at BIGINT NOT NULL,
    key TEXT NOT NULL, status TEXT NOT NULL, status_details TEXT, expires_at BIGINT
);
CREATE INDEX files_project ON files (project, seq);
CREATE TABLE jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL, project TEXT NOT NULL, created_at BIGINT NOT NULL,
    model TEXT NOT NULL, training_file TEXT NOT NULL, validation_file TEXT, suffix TEXT,
    seed BIGINT NOT NULL, metadata JSONB, spec JSONB NOT NULL, status TEXT NOT NULL,
    error JSONB, fine_tuned_model TEXT, finished_at BIGINT, trained_tokens BIGINT,
    estimated_finish BIGINT, result_files JSONB NOT NULL DEFAULT '[]',
    attempt TEXT, worker TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    lease_until DOUBLE PRECISION,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    model_deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_project ON jobs (project, seq);
CREATE INDEX jobs_waiting ON jobs (seq)
    WHERE status IN ('validating_files', 'queued', 'running');
CREATE TABLE job_events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL, created_at BIGINT NOT NULL,
    level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data JSONB,
    at DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE INDEX job_events_job ON job_events (job_id, seq);
""",
    ),
    Migration(
        2,
        "chunks of knowledge bases: pgvector HNSW (cosine) and full-text search",
        """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE kb_meta (
    kb TEXT PRIMARY KEY, dim INTEGER NOT NULL, next_row BIGINT NOT NULL DEFAULT 0,
    n_chunks BIGINT NOT NULL DEFAULT 0, total_len BIGINT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE kb_documents (
    kb TEXT NOT NULL, doc_id TEXT NOT NULL, source TEXT NOT NULL, title TEXT NOT NULL,
    text TEXT NOT NULL, content_hash TEXT NOT NULL, attributes TEXT[] NOT NULL,
    PRIMARY KEY (kb, doc_id)
);
CREATE TABLE kb_chunks (
    kb TEXT NOT NULL, row_id BIGINT NOT NULL, chunk_id TEXT NOT NULL, doc_id TEXT NOT NULL,
    idx INTEGER NOT NULL, text TEXT NOT NULL, start_at BIGINT NOT NULL, end_at BIGINT NOT NULL,
    source TEXT NOT NULL, title TEXT NOT NULL, attributes TEXT[] NOT NULL,
    length INTEGER NOT NULL, embedding vector NOT NULL, tsv tsvector NOT NULL,
    PRIMARY KEY (kb, row_id), UNIQUE (kb, chunk_id)
);
CREATE INDEX kb_chunks_doc ON kb_chunks (kb, doc_id);
CREATE INDEX kb_chunks_tsv ON kb_chunks USING gin (tsv);
-- One HNSW index per knowledge base (partial, on embedding::vector(dim)) is created by
-- ragtune.retrieve.pgstore when the knowledge base is first committed.
""",
    ),
    Migration(
        3,
        "knowledge-base manifests, vector stores (stores, files, batches) and API keys",
        """
CREATE TABLE kb_manifests (
    kb TEXT PRIMARY KEY, manifest JSONB NOT NULL
);
CREATE TABLE vector_stores (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL,
    created_at BIGINT NOT NULL, last_active_at BIGINT NOT NULL, metadata TEXT,
    expires_after TEXT, chunk_tokens INTEGER NOT NULL, chunk_overlap INTEGER NOT NULL
);
CREATE INDEX vector_stores_project ON vector_stores (project, seq);
CREATE TABLE vector_store_files (
    seq BIGSERIAL PRIMARY KEY,
    vector_store_id TEXT NOT NULL, file_id TEXT NOT NULL, project TEXT NOT NULL,
    filename TEXT NOT NULL, object_key TEXT NOT NULL, created_at BIGINT NOT NULL,
    status TEXT NOT NULL, last_error TEXT, usage_bytes BIGINT NOT NULL DEFAULT 0,
    attributes TEXT, batch_id TEXT, doc_id TEXT,
    attempt TEXT, lease_until DOUBLE PRECISION, attempts INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    UNIQUE (vector_store_id, file_id)
);
CREATE INDEX vector_store_files_store ON vector_store_files (vector_store_id, seq);
CREATE INDEX vector_store_files_waiting ON vector_store_files (seq)
    WHERE status = 'in_progress' OR deleted = 1;
CREATE TABLE vector_store_file_batches (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL, vector_store_id TEXT NOT NULL, project TEXT NOT NULL,
    created_at BIGINT NOT NULL, cancelled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE api_keys (
    sha256 TEXT PRIMARY KEY, project TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
""",
    ),
    Migration(
        4,
        "tasks: comparisons and training-data generation (ragtune.jobs.tasks)",
        """
CREATE TABLE tasks (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT UNIQUE NOT NULL, project TEXT NOT NULL, kind TEXT NOT NULL,
    created_at BIGINT NOT NULL, spec JSONB NOT NULL, status TEXT NOT NULL,
    progress JSONB, error JSONB, result JSONB, finished_at BIGINT,
    attempt TEXT, worker TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    lease_until DOUBLE PRECISION, cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX tasks_project ON tasks (project, kind, seq);
CREATE INDEX tasks_waiting ON tasks (seq) WHERE status IN ('queued', 'running');
""",
    ),
    Migration(
        5,
        "keyword search on postings (ragtune.retrieve.pgbm25), backfilled; no GIN index",
        """
SET LOCAL maintenance_work_mem = '512MB';
CREATE TABLE kb_postings (
    kb TEXT NOT NULL, term TEXT NOT NULL, row_id BIGINT NOT NULL,
    tf INTEGER NOT NULL, len INTEGER NOT NULL
);
-- Existing chunks' postings from their tsvectors: tf is the lexeme's position count, which
-- PostgreSQL caps at 256 (re-ingest a knowledge base whose chunks repeat a term more often).
INSERT INTO kb_postings (kb, term, row_id, tf, len)
    SELECT c.kb, u.lexeme, c.row_id, coalesce(array_length(u.positions, 1), 1), c.length
    FROM kb_chunks c, unnest(c.tsv) AS u;
ALTER TABLE kb_postings ADD PRIMARY KEY (kb, term, row_id) INCLUDE (tf, len);
CREATE TABLE kb_terms (
    kb TEXT NOT NULL, term TEXT NOT NULL, df BIGINT NOT NULL, PRIMARY KEY (kb, term)
);
INSERT INTO kb_terms (kb, term, df) SELECT kb, term, count(*) FROM kb_postings GROUP BY kb, term;
DROP INDEX kb_chunks_tsv;
ANALYZE kb_postings, kb_terms;
""",
    ),
)


def current_version(conn: psycopg.Connection) -> int:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


_CURRENT: set[str] = set()  # URLs this process has brought up to date


def ensure_schema(url: str) -> None:
    """:func:`migrate` once per process and URL (the CLI's and a server's many callers)."""
    if url not in _CURRENT:
        migrate(url)
        _CURRENT.add(url)


def migrate(url: str) -> int:
    """Apply the missing migrations to the database at ``url``; return its version after."""
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        version = current_version(conn)
        for m in MIGRATIONS:
            if m.version <= version:
                continue
            conn.execute(m.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (m.version, m.name),
            )
            version = m.version
    return version
