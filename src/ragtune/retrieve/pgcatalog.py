"""Knowledge bases' manifests in PostgreSQL, when ``RAGTUNE_DATABASE_URL`` is set.

The embedded backend keeps a knowledge base's ``manifest.json`` in its folder under
RAGTUNE_HOME; with PostgreSQL every host must see the same knowledge bases, so the manifest is
a row of ``kb_manifests`` (JSONB) and the chunks are in :class:`~ragtune.retrieve.pgstore.PgStore`'s
tables. One writer per knowledge base at a time: :func:`writer_lock` holds a session-level
advisory lock on a connection of its own for the length of an ingest or a removal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from ragtune.errors import RagtuneError
from ragtune.jobs.migrations import ensure_schema


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key for knowledge base ``name``."""
    return int.from_bytes(hashlib.sha256(b"kb:" + name.encode()).digest()[:8], "big", signed=True)


def read_manifest(url: str, name: str) -> dict[str, Any] | None:
    ensure_schema(url)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT manifest::text FROM kb_manifests WHERE kb = %s", (name,)
        ).fetchone()
    return json.loads(row[0]) if row else None


def names(url: str) -> list[str]:
    ensure_schema(url)
    with psycopg.connect(url) as conn:
        return [str(r[0]) for r in conn.execute("SELECT kb FROM kb_manifests ORDER BY kb")]


def size_bytes(url: str, name: str) -> int:
    """The on-disk size of the knowledge base's rows (documents and chunks, not indexes)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM kb_chunks c "
            "WHERE c.kb = %s) + (SELECT coalesce(sum(pg_column_size(d.*)), 0) "
            "FROM kb_documents d WHERE d.kb = %s)",
            (name, name),
        ).fetchone()
    return int(row[0]) if row else 0


def remove(url: str, name: str) -> bool:
    """Delete knowledge base ``name``'s manifest, documents, chunks and HNSW index in one
    transaction; False when there was none."""
    from ragtune.retrieve.pgstore import delete_rows, index_name

    ensure_schema(url)
    with psycopg.connect(url) as conn:
        gone = conn.execute("DELETE FROM kb_manifests WHERE kb = %s", (name,)).rowcount
        delete_rows(conn, name)
        had_meta = conn.execute("DELETE FROM kb_meta WHERE kb = %s", (name,)).rowcount
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index_name(name))))
    return bool(gone or had_meta)


@contextlib.contextmanager
def writer_lock(url: str, name: str) -> Iterator[None]:
    """Exclusive right to change knowledge base ``name`` on any host (the same message as the
    embedded backend's folder lock when another writer holds it)."""
    ensure_schema(url)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(name),)).fetchone()
        if not (row and row[0]):
            raise RagtuneError(f"Another ingest into {name!r} is running", "wait for it to finish")
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(name),))
