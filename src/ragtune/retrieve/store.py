"""Where a knowledge base keeps its documents, chunks, vectors and keyword index.

``Store`` is the small protocol the rest of ragtune talks to, so a server backend
(e.g. PostgreSQL + pgvector) can be added without touching ingest or retrieval.
``LanceStore`` is the embedded default: LanceDB tables for documents and chunks (with
their vectors and metadata filters) plus ragtune's Lucene BM25 index beside them.

Changes are staged and become visible only through :meth:`Store.commit`, which returns
a *snapshot* (LanceDB table versions + the BM25 file) that the knowledge base's
manifest records atomically. Readers open exactly the snapshot the manifest names, so a
writer killed half-way (kill -9) leaves the previous index intact and usable; the next
writer rolls the tables back to that snapshot before changing anything.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ragtune.errors import RagtuneError
from ragtune.retrieve.keywords import SEGMENTS_DIR, KeywordIndex
from ragtune.types import Chunk, Document


@dataclass(frozen=True)
class Filter:
    """Metadata filter: every given field must match (AND); values within a field are OR.

    ``sources`` and ``doc_ids`` match exactly or as a folder prefix (``docs`` matches
    ``docs/a.md``); ``attributes`` match user attributes exactly.
    """

    sources: tuple[str, ...] = ()
    doc_ids: tuple[str, ...] = ()
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not (self.sources or self.doc_ids or self.attributes)

    def matches(self, chunk: Chunk) -> bool:
        def prefix_or_equal(value: str, options: tuple[str, ...]) -> bool:
            return any(value == o or value.startswith(o.rstrip("/") + "/") for o in options)

        if self.sources and not prefix_or_equal(chunk.source, self.sources):
            return False
        if self.doc_ids and not prefix_or_equal(chunk.doc_id, self.doc_ids):
            return False
        return all(chunk.attributes.get(k) in vs for k, vs in self.attributes.items())


def parse_filters(specs: Sequence[str]) -> Filter:
    """``["source=docs/", "doc_id=a", "team=x", "team=y"]`` -> Filter (CLI ``--filter``)."""
    sources: list[str] = []
    doc_ids: list[str] = []
    attrs: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key or not value:
            raise RagtuneError(
                f"Bad filter {spec!r}", "use KEY=VALUE, e.g. source=docs/ or doc_id=x or team=a"
            )
        if key == "source":
            # Sources are stored as absolute paths; accept paths relative to the cwd too.
            sources.append(
                str(Path(value).expanduser().resolve()) if not value.startswith("/") else value
            )
        elif key == "doc_id":
            doc_ids.append(value)
        else:
            attrs.setdefault(key, []).append(value)
    return Filter(tuple(sources), tuple(doc_ids), {k: tuple(v) for k, v in attrs.items()})


class Store(Protocol):
    """Storage and search primitives of one knowledge base."""

    def doc_index(self) -> dict[str, tuple[str, str]]:
        """doc_id -> (content_hash, source) of every document."""
        ...

    def delete_documents(self, doc_ids: Sequence[str]) -> None: ...

    def add(self, docs: Sequence[Document], chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Stage documents with their chunks and (n_chunks, dim) vectors."""
        ...

    def commit(self) -> dict[str, Any]:
        """Publish staged changes; returns the snapshot to record in the manifest."""
        ...

    def dense_search(
        self, vector: np.ndarray, k: int, where: Filter | None = None
    ) -> list[tuple[Chunk, float]]: ...

    def keyword_search(
        self, query: str, k: int, where: Filter | None = None, k1: float = 1.5, b: float = 0.75
    ) -> list[tuple[Chunk, float]]: ...

    def get_chunks(self, chunk_ids: Sequence[str]) -> list[Chunk]: ...

    def get_document(self, doc_id: str) -> Document | None: ...

    def count(self) -> tuple[int, int]:
        """(documents, chunks)"""
        ...


# --- LanceDB backend -------------------------------------------------------------------


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(_sql_str(v) for v in values)})"


def _attrs_to_list(attrs: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(attrs.items())]


def _attrs_from_list(items: Sequence[str] | None) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items or ())


def filter_sql(where: Filter) -> str:
    """The LanceDB (DataFusion SQL) predicate for a filter."""

    def prefix_or_equal(column: str, options: tuple[str, ...]) -> str:
        parts = []
        for o in options:
            like = o.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            parts.append(f"{column} = {_sql_str(o)} OR {column} LIKE {_sql_str(like + '/%')}")
        return "(" + " OR ".join(parts) + ")"

    clauses = []
    if where.sources:
        clauses.append(prefix_or_equal("source", where.sources))
    if where.doc_ids:
        clauses.append(prefix_or_equal("doc_id", where.doc_ids))
    for key, values in sorted(where.attributes.items()):
        items = ", ".join(_sql_str(f"{key}={v}") for v in values)
        clauses.append(f"array_has_any(attributes, [{items}])")
    return " AND ".join(clauses)


def index_text(chunk: Chunk) -> str:
    """What the retrievers see: the document title in front of the chunk's text."""
    return f"{chunk.title} {chunk.text}" if chunk.title else chunk.text


class LanceStore:
    """LanceDB tables ``documents`` and ``chunks`` + a BM25 :class:`KeywordIndex` folder.

    Folder layout: ``lance-<id>/`` (the tables) and ``keywords-<id>-v<chunks>-<docs>/``.
    """

    CHUNK_COLUMNS = ("chunk_id", "doc_id", "idx", "text", "start", "end", "source", "title")

    def __init__(self, folder: Path, dim: int, snapshot: dict[str, Any] | None) -> None:
        """Open ``snapshot`` of the store in ``folder``, or create a new, empty store.

        A new store gets a fresh LanceDB folder, so building one (``--rebuild``) never
        touches the tables the current manifest points at.
        """
        import lancedb
        import pyarrow as pa

        self.folder = folder
        self.dim = dim
        self.lance_dir = snapshot["lance_dir"] if snapshot else f"lance-{time.time_ns()}"
        self._db = lancedb.connect(str(folder / self.lance_dir))
        self._chunk_schema = pa.schema(
            [
                ("chunk_id", pa.string()),
                ("doc_id", pa.string()),
                ("idx", pa.int32()),
                ("text", pa.string()),
                ("start", pa.int64()),
                ("end", pa.int64()),
                ("source", pa.string()),
                ("title", pa.string()),
                ("attributes", pa.list_(pa.string())),
                ("vector", pa.list_(pa.float32(), dim)),
            ]
        )
        self._doc_schema = pa.schema(
            [
                ("doc_id", pa.string()),
                ("source", pa.string()),
                ("title", pa.string()),
                ("text", pa.string()),
                ("content_hash", pa.string()),
                ("attributes", pa.list_(pa.string())),
            ]
        )
        existing = set(self._db.list_tables().tables)
        if snapshot is None:  # a new, empty store
            for name, schema in (("chunks", self._chunk_schema), ("documents", self._doc_schema)):
                self._db.create_table(name, schema=schema)
            self.chunks = self._db.open_table("chunks")
            self.documents = self._db.open_table("documents")
            self.keywords = KeywordIndex.empty(folder / SEGMENTS_DIR)
        else:
            if not {"chunks", "documents"} <= existing:
                raise RagtuneError(
                    f"Knowledge base storage at {folder} is incomplete",
                    "re-create it with ragtune ingest ... --rebuild",
                )
            self.chunks = self._db.open_table("chunks")
            self.documents = self._db.open_table("documents")
            self.chunks.checkout(int(snapshot["chunks_version"]))
            self.documents.checkout(int(snapshot["documents_version"]))
            self.keywords = KeywordIndex.load(
                folder / snapshot["keyword_index"], folder / SEGMENTS_DIR
            )
        self._writable = False
        self._mask_cache: dict[str, np.ndarray] = {}

    def _begin_write(self) -> None:
        """Make the snapshot's versions the latest again (undoing a crashed writer's changes)."""
        if self._writable:
            return
        for table in (self.chunks, self.documents):
            latest = max(v["version"] for v in table.list_versions())
            if table.version == latest:
                table.checkout_latest()  # leave time-travel mode so writes are allowed
            else:
                table.restore()  # a newer, unpublished version exists: roll back to ours
        self._writable = True

    # -- reading ----------------------------------------------------------------------

    def count(self) -> tuple[int, int]:
        return self.documents.count_rows(), self.chunks.count_rows()

    def doc_index(self) -> dict[str, tuple[str, str]]:
        table = self.documents.to_lance().to_table(columns=["doc_id", "content_hash", "source"])
        cols = table.to_pydict()
        return {
            d: (h, s)
            for d, h, s in zip(cols["doc_id"], cols["content_hash"], cols["source"], strict=True)
        }

    def _chunks_from_rows(self, rows: dict[str, list[Any]]) -> list[Chunk]:
        return [
            Chunk(
                chunk_id=rows["chunk_id"][i],
                doc_id=rows["doc_id"][i],
                index=int(rows["idx"][i]),
                text=rows["text"][i],
                start=int(rows["start"][i]),
                end=int(rows["end"][i]),
                source=rows["source"][i],
                title=rows["title"][i],
                attributes=_attrs_from_list(rows["attributes"][i]),
            )
            for i in range(len(rows["chunk_id"]))
        ]

    def get_chunks(self, chunk_ids: Sequence[str]) -> list[Chunk]:
        """Chunks in the order of ``chunk_ids`` (unknown ids are left out)."""
        if not chunk_ids:
            return []
        rows = (
            self.chunks.search()
            .where(_sql_in("chunk_id", chunk_ids))
            .select([*self.CHUNK_COLUMNS, "attributes"])
            .limit(len(chunk_ids))
            .to_arrow()
            .to_pydict()
        )
        by_id = {c.chunk_id: c for c in self._chunks_from_rows(rows)}
        return [by_id[i] for i in chunk_ids if i in by_id]

    def get_document(self, doc_id: str) -> Document | None:
        rows = self.documents.search().where(f"doc_id = {_sql_str(doc_id)}").limit(1).to_list()
        if not rows:
            return None
        r = rows[0]
        return Document(
            doc_id=r["doc_id"],
            text=r["text"],
            source=r["source"],
            title=r["title"],
            attributes=_attrs_from_list(r["attributes"]),
            content_hash=r["content_hash"],
        )

    def dense_search(
        self, vector: np.ndarray, k: int, where: Filter | None = None
    ) -> list[tuple[Chunk, float]]:
        """Exact cosine search (no ANN index: results equal brute force)."""
        if k <= 0 or self.chunks.count_rows() == 0:
            return []
        query = self.chunks.search(np.asarray(vector, dtype=np.float32)).metric("cosine")  # type: ignore[attr-defined]
        if where is not None and not where.is_empty():
            query = query.where(filter_sql(where), prefilter=True)
        columns = [*self.CHUNK_COLUMNS, "attributes", "_distance"]
        rows = query.select(columns).limit(k).to_arrow().to_pydict()
        chunks = self._chunks_from_rows(rows)
        return [(c, 1.0 - float(d)) for c, d in zip(chunks, rows["_distance"], strict=True)]

    def _mask(self, where: Filter) -> np.ndarray:
        sql = filter_sql(where)
        if sql not in self._mask_cache:
            ids = (
                self.chunks.search()
                .where(sql)
                .select(["chunk_id"])
                .limit(max(1, self.chunks.count_rows()))
                .to_arrow()
                .column("chunk_id")
                .to_pylist()
            )
            self._mask_cache[sql] = self.keywords.mask_of(ids)
        return self._mask_cache[sql]

    def keyword_search(
        self, query: str, k: int, where: Filter | None = None, k1: float = 1.5, b: float = 0.75
    ) -> list[tuple[Chunk, float]]:
        if k <= 0 or self.keywords.n_docs == 0:
            return []
        mask = self._mask(where) if where is not None and not where.is_empty() else None
        rows, scores = self.keywords.top_k(query, k, k1=k1, b=b, mask=mask)
        ids = [self.keywords.chunk_id(int(r)) for r in rows]
        chunks = {c.chunk_id: c for c in self.get_chunks(ids)}
        return [(chunks[i], float(s)) for i, s in zip(ids, scores, strict=True) if i in chunks]

    # -- writing ----------------------------------------------------------------------

    def delete_documents(self, doc_ids: Sequence[str]) -> None:
        if not doc_ids:
            return
        self._begin_write()
        for start in range(0, len(doc_ids), 500):
            batch = doc_ids[start : start + 500]
            self.chunks.delete(_sql_in("doc_id", batch))
            self.documents.delete(_sql_in("doc_id", batch))
        self.keywords.remove_documents(set(doc_ids))
        self._mask_cache.clear()

    def add(self, docs: Sequence[Document], chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        import pyarrow as pa

        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        self._begin_write()
        if docs:
            self.documents.add(
                pa.table(
                    {
                        "doc_id": [d.doc_id for d in docs],
                        "source": [d.source for d in docs],
                        "title": [d.title for d in docs],
                        "text": [d.text for d in docs],
                        "content_hash": [d.content_hash for d in docs],
                        "attributes": [_attrs_to_list(d.attributes) for d in docs],
                    },
                    schema=self._doc_schema,
                )
            )
        if chunks:
            flat = pa.array(np.asarray(vectors, dtype=np.float32).reshape(-1))
            self.chunks.add(
                pa.table(
                    {
                        "chunk_id": [c.chunk_id for c in chunks],
                        "doc_id": [c.doc_id for c in chunks],
                        "idx": [c.index for c in chunks],
                        "text": [c.text for c in chunks],
                        "start": [c.start for c in chunks],
                        "end": [c.end for c in chunks],
                        "source": [c.source for c in chunks],
                        "title": [c.title for c in chunks],
                        "attributes": [_attrs_to_list(c.attributes) for c in chunks],
                        "vector": pa.FixedSizeListArray.from_arrays(flat, self.dim),
                    },
                    schema=self._chunk_schema,
                )
            )
            self.keywords.add(chunks)
            self._mask_cache.clear()

    def commit(self) -> dict[str, Any]:
        self._begin_write()
        for table in (self.chunks, self.documents):
            if table.stats()["fragment_stats"]["num_small_fragments"] > 16:  # type: ignore[index]
                table.compact_files()  # many small appends slow scans down
        store_id = self.lance_dir.removeprefix("lance-")
        name = f"keywords-{store_id}-v{self.chunks.version}-{self.documents.version}"
        self.keywords.save(self.folder / name)
        self._mask_cache.clear()
        return {
            "backend": "lancedb",
            "lance_dir": self.lance_dir,
            "chunks_version": self.chunks.version,
            "documents_version": self.documents.version,
            "keyword_index": name,
        }

    def cleanup(self, snapshot: dict[str, Any], grace: timedelta = timedelta(minutes=10)) -> None:
        """After ``snapshot`` is published: drop other keyword-index folders and table
        versions older than ``grace`` (readers of an older manifest get that long)."""

        def stale(path: Path) -> bool:
            return ".tmp" in path.name or time.time() - path.stat().st_mtime > grace.total_seconds()

        for path in self.folder.glob("keywords-*"):
            if path.name != snapshot["keyword_index"] and stale(path):
                shutil.rmtree(path, ignore_errors=True)
        live = {s.name for s in self.keywords.segments}
        for path in (self.folder / SEGMENTS_DIR).glob("seg-*"):
            if path.name not in live and stale(path):  # merged away, or a killed writer's
                shutil.rmtree(path, ignore_errors=True)
        for path in self.folder.glob("lance-*"):
            if path.name != snapshot["lance_dir"]:  # replaced by a rebuild, or a crashed one
                shutil.rmtree(path, ignore_errors=True)
        for table in (self.chunks, self.documents):
            table.cleanup_old_versions(older_than=grace)
