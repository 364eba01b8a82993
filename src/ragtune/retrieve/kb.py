"""A knowledge base: a named folder with a manifest, a store and the embedder it was built with.

Layout of ``$RAGTUNE_HOME/kb/<name>/``::

    manifest.json    format version, the config that built it, embedder, store snapshot
    lance/           LanceDB tables (documents, chunks + vectors)
    keywords-v*/     BM25 index of the published snapshot

The manifest is replaced atomically (write + fsync + rename) and names the exact store
snapshot readers must see, so an interrupted ingest never leaves a half-written index.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune import __version__
from ragtune.config import Fusion, database_url, kb_path, ragtune_home
from ragtune.errors import RagtuneError
from ragtune.io import write_json_atomic
from ragtune.retrieve.fusion import convex_combination_fusion, reciprocal_rank_fusion
from ragtune.retrieve.store import Filter, LanceStore, Store
from ragtune.types import Chunk, Document, Hit, SearchMode

if TYPE_CHECKING:
    from ragtune.retrieve.dense import Embedder
    from ragtune.retrieve.pgstore import PgStore
    from ragtune.retrieve.rerank import CrossEncoderReranker

    WritableStore = LanceStore | PgStore  # the Store backends (both can also ``cleanup``)

KB_FORMAT_VERSION = 1


def read_manifest(folder: Path, name: str) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.exists():
        raise _no_such(name)
    return check_manifest(json.loads(path.read_text(encoding="utf-8")), name)


def _no_such(name: str) -> RagtuneError:
    return RagtuneError(
        f"No knowledge base named {name!r}",
        f"create one with: ragtune ingest PATH --kb {name}",
    )


def check_manifest(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    major = int(manifest.get("format_version", 0))
    if manifest.get("kind") != "ragtune-kb" or major != KB_FORMAT_VERSION:
        raise RagtuneError(
            f"Knowledge base {name!r} has format version {major}; this ragtune reads "
            f"version {KB_FORMAT_VERSION}",
            f"re-create it: ragtune ingest PATH --kb {name} --rebuild",
        )
    return manifest


class KnowledgeBase:
    """Read side of a knowledge base. Open with :meth:`open`; cheap until the first search."""

    def __init__(self, name: str, folder: Path, manifest: dict[str, Any], device: str = "auto"):
        self.name = name
        self.folder = folder
        self.manifest = manifest
        self.device = device
        self.store: Store = open_store(name, manifest, folder)
        self._embedder: Embedder | None = None

    @classmethod
    def open(cls, name: str, device: str = "auto") -> KnowledgeBase:
        manifest = load_manifest(name)
        if manifest is None:
            raise _no_such(name)
        return cls(name, kb_path(name), manifest, device)

    @staticmethod
    def exists(name: str) -> bool:
        url = database_url()
        if url:
            from ragtune.retrieve import pgcatalog

            return pgcatalog.read_manifest(url, kb_path(name).name) is not None
        return (kb_path(name) / "manifest.json").exists()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from ragtune.retrieve.dense import load_embedder

            info = self.manifest["embedder"]
            self._embedder = load_embedder(
                info["name"], backend=info["backend"], device=self.device
            )
        return self._embedder

    def count(self) -> tuple[int, int]:
        return self.store.count()

    def document(self, doc_id: str) -> Document | None:
        return self.store.get_document(doc_id)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        from ragtune.retrieve.dense import embed

        return embed(self.embedder, list(queries))  # (Q, dim)

    def search(
        self,
        query: str,
        k: int = 10,
        mode: SearchMode = "hybrid",
        where: Filter | None = None,
        candidates: int = 100,
        fusion: Fusion = "convex",
        rrf_k: int = 60,
        bm25_weight: float = 1.0,
        dense_weight: float = 1.0,
        k1: float = 1.5,
        b: float = 0.75,
        reranker: CrossEncoderReranker | None = None,
        query_vector: np.ndarray | None = None,
    ) -> list[Hit]:
        """Top ``k`` chunks for ``query``.

        ``hybrid`` fuses the top ``candidates`` of BM25 and of dense retrieval, by weighted
        reciprocal rank fusion (``rrf``) or a weighted sum of min-max normalised scores
        (``convex``); a reranker, if given, reorders the fused candidates.
        """
        if k < 1:
            raise RagtuneError("k must be at least 1")
        if not query.strip():
            raise RagtuneError("The query is empty")
        n = max(k, candidates) if (mode == "hybrid" or reranker is not None) else k
        lists: dict[str, list[tuple[Chunk, float]]] = {}
        if mode in ("bm25", "hybrid"):
            lists["bm25"] = self.store.keyword_search(query, n, where, k1=k1, b=b)
        if mode in ("dense", "hybrid"):
            vec = query_vector if query_vector is not None else self.embed_queries([query])[0]
            lists["dense"] = self.store.dense_search(vec, n, where)
        if mode not in ("bm25", "dense", "hybrid"):
            raise RagtuneError(f"Unknown search mode {mode!r}", "use hybrid, bm25 or dense")

        chunks: dict[str, Chunk] = {}
        raw: dict[str, dict[str, float]] = {}
        for name, results in lists.items():
            for chunk, score in results:
                chunks[chunk.chunk_id] = chunk
                raw.setdefault(chunk.chunk_id, {})[name] = score
        if mode == "hybrid":
            weights = [bm25_weight, dense_weight]
            if fusion == "rrf":
                fused = reciprocal_rank_fusion(
                    [[c.chunk_id for c, _ in lists[r]] for r in ("bm25", "dense")],
                    weights=weights,
                    k=rrf_k,
                )
            elif fusion == "convex":
                fused = convex_combination_fusion(
                    [{c.chunk_id: s for c, s in lists[r]} for r in ("bm25", "dense")],
                    weights=weights,
                )
            else:
                raise RagtuneError(f"Unknown fusion {fusion!r}", "use rrf or convex")
            for cid, s in fused:
                raw[cid][fusion] = s
        else:
            fused = [(c.chunk_id, s) for c, s in lists[mode]]
        hits = [
            Hit(chunk=chunks[cid], score=float(s), rank=i + 1, scores=raw[cid])
            for i, (cid, s) in enumerate(fused)
        ]
        if reranker is not None:
            hits = reranker.rerank(query, hits)
        return hits[:k]

    def search_many(
        self,
        queries: Sequence[str],
        k: int = 10,
        mode: SearchMode = "hybrid",
        where: Filter | None = None,
        candidates: int = 100,
        fusion: Fusion = "convex",
        rrf_k: int = 60,
        bm25_weight: float = 1.0,
        dense_weight: float = 1.0,
        k1: float = 1.5,
        b: float = 0.75,
        reranker: CrossEncoderReranker | None = None,
    ) -> list[list[Hit]]:
        """``search`` for many queries, embedding them in batches first."""
        vectors: Sequence[np.ndarray | None] = (
            list(self.embed_queries(queries)) if mode != "bm25" else [None] * len(queries)
        )
        return [
            self.search(
                q,
                k=k,
                mode=mode,
                where=where,
                candidates=candidates,
                fusion=fusion,
                rrf_k=rrf_k,
                bm25_weight=bm25_weight,
                dense_weight=dense_weight,
                k1=k1,
                b=b,
                reranker=reranker,
                query_vector=v,
            )
            for q, v in zip(queries, vectors, strict=True)
        ]


# --- where knowledge bases live: folders under RAGTUNE_HOME, or PostgreSQL ----------------


def load_manifest(name: str) -> dict[str, Any] | None:
    """Knowledge base ``name``'s manifest, or None when there is none. With
    ``RAGTUNE_DATABASE_URL`` set it is read from PostgreSQL (every host sees the same
    knowledge bases), else from the folder under RAGTUNE_HOME."""
    folder = kb_path(name)  # rejects a bad name
    url = database_url()
    if url:
        from ragtune.retrieve import pgcatalog

        manifest = pgcatalog.read_manifest(url, name)
        return None if manifest is None else check_manifest(manifest, name)
    return read_manifest(folder, name) if (folder / "manifest.json").exists() else None


def publish(name: str, store: WritableStore, manifest: dict[str, Any]) -> tuple[int, int]:
    """Commit ``store``'s staged changes and point ``manifest`` (updated in place) at them:
    in PostgreSQL in one transaction; in a folder by replacing manifest.json atomically after
    the new snapshot is written. Readers see the old or the new state, never a mix; a writer
    killed before this returns leaves the old one. Returns (documents, chunks)."""
    manifest["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if not isinstance(store, LanceStore):
        store.commit(manifest)
        counts = manifest["counts"]
        return int(counts["documents"]), int(counts["chunks"])
    snapshot = store.commit()
    documents, chunks = store.count()
    manifest.update(store=snapshot, counts={"documents": documents, "chunks": chunks})
    write_json_atomic(kb_path(name) / "manifest.json", manifest)
    store.cleanup(snapshot)
    return documents, chunks


def _pg_url(name: str) -> str:
    url = database_url()
    if not url:
        raise RagtuneError(
            f"Knowledge base {name!r} is in PostgreSQL but RAGTUNE_DATABASE_URL is not set",
            "set RAGTUNE_DATABASE_URL=postgresql://… to the database it was built in",
        )
    return url


def pg_ef_search() -> int:
    """pgvector's HNSW search breadth for PostgreSQL knowledge bases: ``RAGTUNE_PG_EF_SEARCH``
    (1 to 1000, pgvector's range; default 40). Higher finds more of the true nearest
    neighbours, slower (bench/RESULTS.md: 1M chunks need about 1000 for recall@10 0.95)."""
    raw = os.environ.get("RAGTUNE_PG_EF_SEARCH", "40")
    if not raw.strip().isdigit() or not 1 <= int(raw) <= 1000:
        raise RagtuneError(
            f"RAGTUNE_PG_EF_SEARCH={raw!r} is not a whole number from 1 to 1000",
            "unset it for the default 40, or pick e.g. 100 or 1000",
        )
    return int(raw)


def open_store(name: str, manifest: dict[str, Any], folder: Path | None = None) -> WritableStore:
    """The store a published manifest names: LanceDB (the default; in ``folder``, by
    default the knowledge base's folder in RAGTUNE_HOME) or PgStore."""
    dim = int(manifest["embedder"]["dim"])
    if manifest.get("backend") == "postgresql":
        from ragtune.jobs.migrations import ensure_schema
        from ragtune.retrieve.pgstore import PgStore

        url = _pg_url(name)
        ensure_schema(url)
        return PgStore(url, name, dim, ef_search=pg_ef_search())
    return LanceStore(folder or kb_path(name), dim, manifest["store"])


def new_store(name: str, dim: int) -> WritableStore:
    """A new, empty store for knowledge base ``name`` on the configured backend (staged:
    nothing changes for readers until it commits and the manifest is published)."""
    url = database_url()
    if url:
        from ragtune.jobs.migrations import ensure_schema
        from ragtune.retrieve.pgstore import PgStore

        ensure_schema(url)
        return PgStore(url, name, dim, fresh=True, ef_search=pg_ef_search())
    return LanceStore(kb_path(name), dim, None)


def store_backend() -> str:
    """The backend new knowledge bases get: ``postgresql`` or ``lancedb``."""
    return "postgresql" if database_url() else "lancedb"


@contextlib.contextmanager
def kb_lock(name: str) -> Iterator[None]:
    """Exclusive right to change knowledge base ``name`` (ingest, remove), on any host when
    it is in PostgreSQL."""
    url = database_url()
    if url:
        from ragtune.retrieve import pgcatalog

        with pgcatalog.writer_lock(url, name):
            yield
    else:
        with writer_lock(kb_path(name), name):
            yield


def new_manifest(name: str, config: dict[str, Any], embedder: dict[str, Any]) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return {
        "format_version": KB_FORMAT_VERSION,
        "kind": "ragtune-kb",
        "backend": store_backend(),
        "ragtune_version": __version__,
        "name": name,
        "created_at": now,
        "updated_at": now,
        "config": config,
        "embedder": embedder,
        "store": None,
        "counts": {"documents": 0, "chunks": 0},
    }


@contextlib.contextmanager
def writer_lock(folder: Path, name: str) -> Iterator[None]:
    """Exclusive right to change knowledge base ``name`` (ingest, remove)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RagtuneError(
                f"Another ingest into {name!r} is running", "wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class KbInfo:
    """What ``ragtune kb list`` / ``kb info`` show about one knowledge base."""

    name: str
    documents: int
    chunks: int
    size_bytes: int
    created_at: str
    updated_at: str
    embedder: str
    config: dict[str, Any]
    made_by: str  # "ingest", or "eval" for the eval-<hash> bases ragtune eval builds
    problem: str = ""  # why the manifest could not be read, if it could not

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "documents": self.documents,
            "chunks": self.chunks,
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "embedder": self.embedder,
            "config": self.config,
            "made_by": self.made_by,
            "problem": self.problem,
        }


def _folder_size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def kb_info(name: str) -> KbInfo:
    """Facts about knowledge base ``name`` from its manifest (no model is loaded)."""
    folder = kb_path(name)
    made_by = "eval" if name.startswith("eval-") else "ingest"
    url = database_url()
    try:
        manifest = load_manifest(name)
        if manifest is None:
            raise _no_such(name)
    except (RagtuneError, ValueError, KeyError) as e:
        if url or not folder.is_dir():
            raise
        problem = e.message if isinstance(e, RagtuneError) else f"unreadable manifest: {e}"
        return KbInfo(name, 0, 0, _folder_size(folder), "", "", "", {}, made_by, problem)
    counts = manifest.get("counts", {})
    if url:
        from ragtune.retrieve import pgcatalog

        size = pgcatalog.size_bytes(url, name)
    else:
        size = _folder_size(folder)
    return KbInfo(
        name=name,
        documents=int(counts.get("documents", 0)),
        chunks=int(counts.get("chunks", 0)),
        size_bytes=size,
        created_at=str(manifest.get("created_at", "")),
        updated_at=str(manifest.get("updated_at", "")),
        embedder=str(manifest.get("embedder", {}).get("name", "")),
        config=dict(manifest.get("config", {})),
        made_by=made_by,
    )


def list_knowledge_bases() -> list[KbInfo]:
    """Every knowledge base (under ``$RAGTUNE_HOME/kb``, or in PostgreSQL), by name."""
    url = database_url()
    if url:
        from ragtune.retrieve import pgcatalog

        return [kb_info(name) for name in pgcatalog.names(url)]
    root = ragtune_home() / "kb"
    if not root.is_dir():
        return []
    return [
        kb_info(p.name) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
    ]


def remove_knowledge_base(name: str) -> None:
    """Delete knowledge base ``name``: it is renamed out of sight first (atomic), so a
    crash part-way never leaves a half-deleted base under its name."""
    folder = kb_path(name)
    url = database_url()
    if url:
        from ragtune.retrieve import pgcatalog

        with kb_lock(name):
            if not pgcatalog.remove(url, name):
                raise RagtuneError(
                    f"No knowledge base named {name!r}", "see them with: ragtune kb list"
                )
        return
    if not folder.is_dir():
        raise RagtuneError(f"No knowledge base named {name!r}", "see them with: ragtune kb list")
    with writer_lock(folder, name):
        trash = folder.parent / f".removing-{name}-{os.getpid()}"
        os.replace(folder, trash)
    shutil.rmtree(trash)


def discard_knowledge_base(name: str) -> None:
    """Delete knowledge base ``name`` if there is one, without waiting for its writer (a
    vector store deleted through the API)."""
    url = database_url()
    if url:
        from ragtune.retrieve import pgcatalog

        pgcatalog.remove(url, name)
    else:
        shutil.rmtree(kb_path(name), ignore_errors=True)
