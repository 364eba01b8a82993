"""A knowledge base's :class:`~ragtune.retrieve.store.Store` in PostgreSQL: pgvector for the
dense side, PostgreSQL full-text search for the keyword side.

Dense search is cosine distance (``<=>``) over an HNSW index (Malkov & Yashunin 2018,
"Efficient and robust approximate nearest neighbor search using Hierarchical Navigable Small
World graphs"), one partial index per knowledge base on ``embedding::vector(dim)``;
``ef_search`` trades recall for latency (``exact=True`` scans instead: the ground truth).
Filtered searches use pgvector's iterative index scan, so a selective filter still returns
``k`` rows.

Keyword search scores exactly as the embedded backend's :mod:`ragtune.retrieve.bm25` (Lucene
BM25): each chunk's ``tsvector`` is built from ragtune's own tokens (the same stop words and
stems), its GIN index finds the chunks holding a query term, and the score
``sum_t idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl))`` is computed in SQL from the
lexemes' position counts (tf), the stored token count (|d|) and the knowledge base's totals
(N, avgdl). Ties break by row (insertion order) as there, so both backends rank alike, and
:meth:`ragtune.retrieve.kb.KnowledgeBase.search` fuses them with the same fusion function.
One limit: PostgreSQL keeps at most 256 positions of a lexeme per chunk, so a term repeated
more often than that in one chunk counts 256 times.

Writes are staged in one open transaction and published by :meth:`PgStore.commit`: readers
see the previous state until then (MVCC), a writer killed half-way leaves it intact, and
writers of one knowledge base queue on its ``kb_meta`` row.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from ragtune.retrieve import pgbm25
from ragtune.retrieve.bm25 import _check_params, idf, tokenize
from ragtune.retrieve.store import (
    Filter,
    LanceStore,
    _attrs_from_list,
    _attrs_to_list,
    index_text,
)
from ragtune.types import Chunk, Document

MAX_POSITION = 16383  # PostgreSQL's largest tsvector position
_CHUNK_COLUMNS = "chunk_id, doc_id, idx, text, start_at, end_at, source, title, attributes"


def tsvector_literal(tokens: Sequence[str]) -> str:
    """``'term':1,4 'other':2`` -- a tsvector holding exactly ``tokens`` (no re-parsing)."""
    positions: dict[str, list[int]] = {}
    for i, t in enumerate(tokens, start=1):
        positions.setdefault(t, []).append(min(i, MAX_POSITION))
    return " ".join(
        "'" + t.replace("\\", "\\\\").replace("'", "''") + "':" + ",".join(map(str, sorted(set(p))))
        for t, p in positions.items()
    )


def tsquery_literal(term: str) -> str:
    return "'" + term.replace("\\", "\\\\").replace("'", "''") + "'"


def filter_clause(where: Filter | None) -> tuple[sql.Composable, list[Any]]:
    """The SQL predicate for a metadata filter (``TRUE`` for none) and its parameters."""
    if where is None or where.is_empty():
        return sql.SQL("TRUE"), []
    args: list[Any] = []

    def prefix_or_equal(column: str, options: tuple[str, ...]) -> sql.Composable:
        parts = []
        for o in options:
            like = o.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            parts.append(sql.SQL("({c} = %s OR {c} LIKE %s)").format(c=sql.Identifier(column)))
            args.extend([o, like + "/%"])
        return sql.SQL("(") + sql.SQL(" OR ").join(parts) + sql.SQL(")")

    clauses: list[sql.Composable] = []
    if where.sources:
        clauses.append(prefix_or_equal("source", where.sources))
    if where.doc_ids:
        clauses.append(prefix_or_equal("doc_id", where.doc_ids))
    for key, values in sorted(where.attributes.items()):
        clauses.append(sql.SQL("attributes && %s::text[]"))
        args.append([f"{key}={v}" for v in values])
    return sql.SQL(" AND ").join(clauses), args


def delete_rows(conn: psycopg.Connection[Any], kb: str) -> None:
    """Delete knowledge base ``kb``'s documents, chunks, postings and terms (not its meta)."""
    for table in ("kb_postings", "kb_terms", "kb_chunks", "kb_documents"):
        conn.execute(sql.SQL("DELETE FROM {} WHERE kb = %s").format(sql.Identifier(table)), (kb,))


def index_name(kb: str) -> str:
    return "kb_hnsw_" + hashlib.sha256(kb.encode()).hexdigest()[:16]


class PgStore:
    """Documents, chunks, vectors and keyword index of knowledge base ``kb`` in PostgreSQL.

    The schema comes from :mod:`ragtune.jobs.migrations` (applied by the caller, e.g.
    ``PostgresDB``); ``ef_search`` is pgvector's HNSW search breadth (default 40).
    """

    def __init__(
        self,
        url: str,
        kb: str,
        dim: int,
        ef_search: int = 40,
        exact: bool = False,
        m: int = 16,
        ef_construction: int = 64,
        fresh: bool = False,
        build_memory: str = "512MB",
    ) -> None:
        self.url = url
        self.fresh = fresh  # the first write transaction empties the knowledge base first
        self.build_memory = build_memory  # maintenance_work_mem of the HNSW build
        self.kb = kb
        self.dim = dim
        self.ef_search = ef_search
        self.exact = exact
        self.m = m
        self.ef_construction = ef_construction
        self._lock = threading.Lock()  # one reading connection, shared by a server's threads
        self._read = self._open(autocommit=True)
        self._write: psycopg.Connection[Any] | None = None

    def _open(self, autocommit: bool) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.url, autocommit=autocommit, prepare_threshold=None)
        register_vector(conn)
        return conn

    def close(self) -> None:
        if self._write is not None:
            self._write.rollback()
            self._write.close()
            self._write = None
        self._read.close()

    # -- reading ----------------------------------------------------------------------

    def _rows(self, query: sql.Composed | str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._read.execute(query, args).fetchall()

    def _meta(self) -> tuple[int, int]:
        """(chunks, total tokens) of the published knowledge base."""
        rows = self._rows("SELECT n_chunks, total_len FROM kb_meta WHERE kb = %s", (self.kb,))
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def count(self) -> tuple[int, int]:
        docs = self._rows("SELECT count(*) FROM kb_documents WHERE kb = %s", (self.kb,))
        return int(docs[0][0]), self._meta()[0]

    def doc_index(self) -> dict[str, tuple[str, str]]:
        rows = self._rows(
            "SELECT doc_id, content_hash, source FROM kb_documents WHERE kb = %s", (self.kb,)
        )
        return {d: (h, s) for d, h, s in rows}

    def get_document(self, doc_id: str) -> Document | None:
        rows = self._rows(
            "SELECT doc_id, text, source, title, attributes, content_hash FROM kb_documents "
            "WHERE kb = %s AND doc_id = %s",
            (self.kb, doc_id),
        )
        if not rows:
            return None
        d, text, source, title, attrs, h = rows[0]
        return Document(d, text, source, title, _attrs_from_list(attrs), h)

    def get_chunks(self, chunk_ids: Sequence[str]) -> list[Chunk]:
        """Chunks in the order of ``chunk_ids`` (unknown ids are left out)."""
        if not chunk_ids:
            return []
        rows = self._rows(
            f"SELECT {_CHUNK_COLUMNS} FROM kb_chunks WHERE kb = %s AND chunk_id = ANY(%s)",
            (self.kb, list(chunk_ids)),
        )
        by_id = {c.chunk_id: c for c in map(_chunk, rows)}
        return [by_id[i] for i in chunk_ids if i in by_id]

    def dense_search(
        self, vector: np.ndarray, k: int, where: Filter | None = None
    ) -> list[tuple[Chunk, float]]:
        """Cosine similarity ``1 - (a <=> b)``: HNSW (approximate) unless ``exact``."""
        if k <= 0:
            return []
        where_sql, where_args = filter_clause(where)
        query = sql.SQL(
            "SELECT {cols}, embedding::vector({dim}) <=> %s::vector({dim}) AS d FROM kb_chunks "
            "WHERE kb = {kb} AND {where} ORDER BY d, row_id LIMIT %s"
        ).format(
            cols=sql.SQL(_CHUNK_COLUMNS),
            dim=sql.Literal(self.dim),
            kb=sql.Literal(self.kb),  # a literal, so the planner matches the partial index
            where=where_sql,
        )
        vec = np.asarray(vector, dtype=np.float32)
        with self._lock, self._read.transaction():
            if self.exact:
                self._read.execute("SET LOCAL enable_indexscan = off")
            else:
                self._read.execute(
                    sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(self.ef_search))
                )
                self._read.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            rows = self._read.execute(query, (vec, *where_args, k)).fetchall()
        return [(_chunk(r[:-1]), 1.0 - float(r[-1])) for r in rows]

    def keyword_search(
        self, query: str, k: int, where: Filter | None = None, k1: float = 1.5, b: float = 0.75
    ) -> list[tuple[Chunk, float]]:
        """Lucene BM25 over the postings table (:mod:`ragtune.retrieve.pgbm25`), best first,
        ties by insertion order."""
        _check_params(k1, b)
        n, total = self._meta()
        repeats = Counter(tokenize(query))
        if k <= 0 or n == 0 or not repeats:
            return []
        found = self._rows(
            "SELECT term, df FROM kb_terms WHERE kb = %s AND term = ANY(%s) AND df > 0",
            (self.kb, sorted(repeats)),
        )
        if not found:
            return []
        dfs = np.array([int(d) for _, d in found], dtype=np.float64)
        weights = idf(dfs, n) * np.array([repeats[t] for t, _ in found], dtype=np.float64)
        order = sorted(range(len(found)), key=lambda i: (-weights[i], found[i][0]))
        terms = [str(found[i][0]) for i in order]
        w = [float(weights[i]) for i in order]
        where_sql, where_args = filter_clause(where)
        term_dfs = [int(dfs[i]) for i in order]
        split = pgbm25.first_split(w, term_dfs, k)
        while True:
            if not pgbm25.worth_probing(
                sum(term_dfs[:split]), sum(w[split:]), w[split - 1], term_dfs[split:]
            ):
                split = len(terms)  # common terms only: reading them whole is cheaper
            rest_weight = float(sum(w[split:]))
            query_sql = pgbm25.search_sql(
                self.kb,
                k,
                k1,
                b,
                total / n,
                rest_weight if split < len(terms) else None,
                None if where is None or where.is_empty() else where_sql,
                _CHUNK_COLUMNS,
            )
            args = (terms[:split], w[:split], terms[split:], w[split:], *where_args)
            rows = self._rows(query_sql, args)
            theta = float(rows[0][-1]) if rows else 0.0
            if split == len(terms) or pgbm25.bound_holds(rest_weight, theta):
                return [(_chunk(r[:-2]), float(r[-2])) for r in rows]
            split += 1

    # -- writing ----------------------------------------------------------------------

    def _writer(self) -> psycopg.Connection[Any]:
        """The open write transaction, begun by locking this knowledge base's meta row."""
        if self._write is None:
            conn = self._open(autocommit=False)
            conn.execute(
                "INSERT INTO kb_meta (kb, dim) VALUES (%s, %s) ON CONFLICT (kb) DO NOTHING",
                (self.kb, self.dim),
            )
            row = conn.execute(
                "SELECT dim FROM kb_meta WHERE kb = %s FOR UPDATE", (self.kb,)
            ).fetchone()
            if self.fresh and row is not None:
                self._empty(conn, int(row[0]))
                row = (self.dim,)
            if row is None or int(row[0]) != self.dim:
                conn.rollback()
                conn.close()
                from ragtune.errors import RagtuneError

                raise RagtuneError(
                    f"Knowledge base {self.kb!r} in PostgreSQL has {row and row[0]}-d vectors, "
                    f"not {self.dim}-d",
                    "re-create it with the embedder it was built with, or use another name",
                )
            self._write = conn
        return self._write

    def _empty(self, conn: psycopg.Connection[Any], dim: int) -> None:
        """Stage the removal of everything in this knowledge base (a rebuild, or rows an
        ingest committed before it died without publishing a manifest); readers keep
        seeing the old rows until :meth:`commit`."""
        delete_rows(conn, self.kb)
        if dim != self.dim:  # the HNSW index is on embedding::vector(dim): rebuilt at commit
            conn.execute(
                sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index_name(self.kb)))
            )
        conn.execute(
            "UPDATE kb_meta SET dim = %s, n_chunks = 0, total_len = 0 WHERE kb = %s",
            (self.dim, self.kb),
        )
        self.fresh = False

    def cleanup(self, snapshot: dict[str, Any]) -> None:
        """Nothing to drop: PostgreSQL's MVCC keeps no old snapshots for readers to open."""

    def delete_documents(self, doc_ids: Sequence[str]) -> None:
        if not doc_ids:
            return
        w = self._writer()
        # the chunks' postings first (found through their tsvector's terms and the primary
        # key), their terms' document frequencies lowered by as many
        w.execute(
            "WITH gone AS (DELETE FROM kb_postings p USING (SELECT row_id, "
            "unnest(tsvector_to_array(tsv)) AS term FROM kb_chunks WHERE kb = %s "
            "AND doc_id = ANY(%s)) g WHERE p.kb = %s AND p.term = g.term AND p.row_id = g.row_id "
            "RETURNING p.term), n AS (SELECT term, count(*) AS c FROM gone GROUP BY term) "
            "UPDATE kb_terms t SET df = t.df - n.c FROM n WHERE t.kb = %s AND t.term = n.term",
            (self.kb, list(doc_ids), self.kb, self.kb),
        )
        row = w.execute(
            "WITH gone AS (DELETE FROM kb_chunks WHERE kb = %s AND doc_id = ANY(%s) "
            "RETURNING length) SELECT count(*), coalesce(sum(length), 0) FROM gone",
            (self.kb, list(doc_ids)),
        ).fetchone()
        assert row is not None
        w.execute(
            "UPDATE kb_meta SET n_chunks = n_chunks - %s, total_len = total_len - %s WHERE kb = %s",
            (row[0], row[1], self.kb),
        )
        w.execute(
            "DELETE FROM kb_documents WHERE kb = %s AND doc_id = ANY(%s)",
            (self.kb, list(doc_ids)),
        )

    def add(self, docs: Sequence[Document], chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        w = self._writer()
        with w.cursor() as cur:
            if docs:
                with cur.copy(
                    "COPY kb_documents (kb, doc_id, source, title, text, content_hash, "
                    "attributes) FROM STDIN"
                ) as copy:
                    for d in docs:
                        copy.write_row(
                            (
                                self.kb,
                                d.doc_id,
                                d.source,
                                d.title,
                                d.text,
                                d.content_hash,
                                _attrs_to_list(d.attributes),
                            )
                        )
            if not chunks:
                return
            row = cur.execute(
                "UPDATE kb_meta SET next_row = next_row + %s WHERE kb = %s RETURNING next_row",
                (len(chunks), self.kb),
            ).fetchone()
            assert row is not None
            first = int(row[0]) - len(chunks)
            token_lists = [tokenize(index_text(c)) for c in chunks]
            total = sum(map(len, token_lists))
            vecs = np.asarray(vectors, dtype=np.float32)
            with cur.copy(
                "COPY kb_chunks (kb, row_id, chunk_id, doc_id, idx, text, start_at, end_at, "
                "source, title, attributes, length, embedding, tsv) FROM STDIN"
            ) as copy:
                for i, (c, tokens) in enumerate(zip(chunks, token_lists, strict=True)):
                    copy.write_row(
                        (
                            self.kb,
                            first + i,
                            c.chunk_id,
                            c.doc_id,
                            c.index,
                            c.text,
                            c.start,
                            c.end,
                            c.source,
                            c.title,
                            _attrs_to_list(c.attributes),
                            len(tokens),
                            vecs[i],
                            tsvector_literal(tokens),
                        )
                    )
            with cur.copy("COPY kb_postings (kb, term, row_id, tf, len) FROM STDIN") as copy:
                for posting in pgbm25.postings(self.kb, first, token_lists):
                    copy.write_row(posting)
            df = pgbm25.document_frequencies(token_lists)
            cur.execute(
                "INSERT INTO kb_terms (kb, term, df) SELECT %s, t, d FROM unnest(%s::text[], "
                "%s::bigint[]) AS u(t, d) ON CONFLICT (kb, term) DO UPDATE "
                "SET df = kb_terms.df + excluded.df",
                (self.kb, list(df), list(df.values())),
            )
            cur.execute(
                "UPDATE kb_meta SET n_chunks = n_chunks + %s, total_len = total_len + %s "
                "WHERE kb = %s",
                (len(chunks), total, self.kb),
            )

    def commit(self, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
        """Build this knowledge base's HNSW index if it has none, and publish. A given
        ``manifest`` gets the snapshot and counts and is stored in the same transaction, so
        readers see the new chunks and the manifest describing them at once."""
        w = self._writer()
        # the build is much faster while the graph fits in maintenance_work_mem
        w.execute(
            sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(self.build_memory))
        )
        w.execute(
            sql.SQL(
                "CREATE INDEX IF NOT EXISTS {name} ON kb_chunks USING hnsw "
                "((embedding::vector({dim})) vector_cosine_ops) "
                "WITH (m = {m}, ef_construction = {efc}) WHERE kb = {kb}"
            ).format(
                name=sql.Identifier(index_name(self.kb)),
                dim=sql.Literal(self.dim),
                m=sql.Literal(self.m),
                efc=sql.Literal(self.ef_construction),
                kb=sql.Literal(self.kb),
            )
        )
        row = w.execute(
            "UPDATE kb_meta SET version = version + 1 WHERE kb = %s RETURNING version, n_chunks",
            (self.kb,),
        ).fetchone()
        assert row is not None
        snapshot = {"backend": "postgresql", "kb": self.kb, "version": int(row[0])}
        if manifest is not None:
            docs = w.execute(
                "SELECT count(*) FROM kb_documents WHERE kb = %s", (self.kb,)
            ).fetchone()
            assert docs is not None
            manifest.update(
                store=snapshot, counts={"documents": int(docs[0]), "chunks": int(row[1])}
            )
            w.execute(
                "INSERT INTO kb_manifests (kb, manifest) VALUES (%s, %s::jsonb) "
                "ON CONFLICT (kb) DO UPDATE SET manifest = excluded.manifest",
                (self.kb, json.dumps(manifest, sort_keys=True)),
            )
        w.commit()
        w.close()
        self._write = None
        return snapshot


def _chunk(r: Sequence[Any]) -> Chunk:
    chunk_id, doc_id, idx, text, start, end, source, title, attrs = r
    return Chunk(
        chunk_id,
        doc_id,
        int(idx),
        text,
        int(start),
        int(end),
        source,
        title,
        _attrs_from_list(attrs),
    )


def copy_lance_store(src: LanceStore, dst: PgStore, batch: int = 2000) -> tuple[int, int]:
    """Copy every document, chunk and vector of an embedded store into ``dst`` (staged; the
    caller commits). Chunks go in the embedded keyword index's row order, so both backends
    break score ties alike. Returns (documents, chunks) copied."""
    docs = src.documents.to_lance().to_table().to_pydict()
    documents = [
        Document(d, t, s, ti, _attrs_from_list(a), h)
        for d, t, s, ti, a, h in zip(
            docs["doc_id"],
            docs["text"],
            docs["source"],
            docs["title"],
            docs["attributes"],
            docs["content_hash"],
            strict=True,
        )
    ]
    dst.add(documents, [], np.zeros((0, dst.dim), dtype=np.float32))
    table = src.chunks.to_lance().to_table(columns=[*src.CHUNK_COLUMNS, "attributes", "vector"])
    rows = table.to_pydict()
    chunks = src._chunks_from_rows(rows)
    position = {c.chunk_id: i for i, c in enumerate(chunks)}
    order = [position[c] for c in src.keywords.chunk_ids]
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32).reshape(
        len(chunks), dst.dim
    )
    for start in range(0, len(order), batch):
        part = order[start : start + batch]
        dst.add([], [chunks[i] for i in part], vectors[part])
    return len(documents), len(order)
