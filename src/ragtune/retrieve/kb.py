"""A knowledge base: a named folder with a manifest, a store and the embedder it was built with.

Layout of ``$RAGTUNE_HOME/kb/<name>/``::

    manifest.json    format version, the config that built it, embedder, store snapshot
    lance/           LanceDB tables (documents, chunks + vectors)
    keywords-v*/     BM25 index of the published snapshot

The manifest is replaced atomically (write + fsync + rename) and names the exact store
snapshot readers must see, so an interrupted ingest never leaves a half-written index.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune import __version__
from ragtune.config import Fusion, kb_path
from ragtune.errors import RagtuneError
from ragtune.retrieve.fusion import convex_combination_fusion, reciprocal_rank_fusion
from ragtune.retrieve.store import Filter, LanceStore
from ragtune.types import Chunk, Document, Hit, SearchMode

if TYPE_CHECKING:
    from ragtune.retrieve.dense import Embedder
    from ragtune.retrieve.rerank import CrossEncoderReranker

KB_FORMAT_VERSION = 1


def read_manifest(folder: Path, name: str) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.exists():
        raise RagtuneError(
            f"No knowledge base named {name!r}",
            f"create one with: ragtune ingest PATH --kb {name}",
        )
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
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
        self.store = LanceStore(folder, int(manifest["embedder"]["dim"]), manifest["store"])
        self._embedder: Embedder | None = None

    @classmethod
    def open(cls, name: str, device: str = "auto") -> KnowledgeBase:
        folder = kb_path(name)
        return cls(name, folder, read_manifest(folder, name), device)

    @staticmethod
    def exists(name: str) -> bool:
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


def new_manifest(name: str, config: dict[str, Any], embedder: dict[str, Any]) -> dict[str, Any]:
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return {
        "format_version": KB_FORMAT_VERSION,
        "kind": "ragtune-kb",
        "ragtune_version": __version__,
        "name": name,
        "created_at": now,
        "updated_at": now,
        "config": config,
        "embedder": embedder,
        "store": None,
        "counts": {"documents": 0, "chunks": 0},
    }
