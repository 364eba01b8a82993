"""The vector store tables in PostgreSQL, chosen by ``RAGTUNE_DATABASE_URL`` (schema from
:mod:`ragtune.jobs.migrations`, version 3).

The queries are :class:`~ragtune.jobs.vector_stores.VectorStoreDB`'s, run through a
connection that takes SQLite's ``?`` placeholders, so both backends answer every call alike.
Only the ingestion queue's locking differs, as the job table's does: a worker claims files
with ``SELECT … FOR UPDATE SKIP LOCKED`` (concurrent claimers on any hosts skip each other's
rows); leases are measured on the database's clock on both backends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from ragtune.jobs.migrations import ensure_schema
from ragtune.jobs.vector_stores import VectorStoreDB


class _QmarkConnection:
    """A psycopg connection that accepts the SQLite queries' ``?`` placeholders (none of
    those queries holds a literal ``?`` or ``%``)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, query: str, args: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(query.replace("?", "%s").encode(), args)

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> psycopg.Cursor[Any]:
        cur = self.conn.cursor()
        cur.executemany(query.replace("?", "%s").encode(), rows)
        return cur


class PgVectorStoreDB(VectorStoreDB):
    """Vector stores, their files and batches, in a PostgreSQL database."""

    _NOW = "extract(epoch from clock_timestamp())"
    _SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"  # concurrent claimers skip each other's rows

    def __init__(self, url: str) -> None:  # no SQLite file: the base's __init__ is not run
        self.url = url
        ensure_schema(url)

    @contextlib.contextmanager
    def _connect(self, immediate: bool = False) -> Iterator[_QmarkConnection]:
        with psycopg.connect(self.url) as conn:  # commits on success, rolls back on error
            yield _QmarkConnection(conn)
