"""Searching vector stores with ragtune's hybrid retrieval.

A vector store is the knowledge base named after its id. Its files' ``attributes`` live in
the service database, so OpenAI's attribute filters are evaluated there (:func:`matches`)
and become the set of document ids the knowledge base may return; a file deleted a moment
ago, or not completed yet, is simply not in that set, whatever the index still holds.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.config import RetrieveConfig, kb_path
from ragtune.jobs.vector_stores import Attributes, VSFileRecord
from ragtune.retrieve.kb import KnowledgeBase, load_manifest
from ragtune.retrieve.store import Filter
from ragtune.serve.protocol.vector_stores import ComparisonFilter, CompoundFilter, Filters
from ragtune.types import Chunk


def _compare(op: str, have: Any, want: Any) -> bool:
    if op in ("in", "nin"):
        found = isinstance(want, list) and any(_equal(have, w) for w in want)
        return found if op == "in" else not found
    if op == "eq":
        return _equal(have, want)
    if op == "ne":
        return not _equal(have, want)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (have, want))
    if not numbers and not (isinstance(have, str) and isinstance(want, str)):
        return False  # gt/gte/lt/lte order numbers with numbers and strings with strings
    return {
        "gt": have > want,
        "gte": have >= want,
        "lt": have < want,
        "lte": have <= want,
    }[op]


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def matches(where: Filters | None, attributes: Attributes | None) -> bool:
    """OpenAI's attribute filter on one file: a comparison ``{key, type, value}`` or a
    compound ``{type: and|or, filters}``, nested. A missing key satisfies only ``ne``/``nin``."""
    if where is None:
        return True
    attrs = attributes or {}
    if isinstance(where, CompoundFilter):
        results = (matches(f, attrs) for f in where.filters)
        return all(results) if where.type == "and" else any(results)
    assert isinstance(where, ComparisonFilter)
    if where.key not in attrs:
        return where.type in ("ne", "nin")
    return _compare(where.type, attrs[where.key], where.value)


@dataclass(frozen=True)
class StoreHit:
    file: VSFileRecord
    chunk: Chunk
    score: float


class KnowledgeBases:
    """The open knowledge base of each store, reopened when a worker publishes a snapshot."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._open: dict[str, tuple[str, KnowledgeBase]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> KnowledgeBase | None:
        manifest = load_manifest(name)  # from the folder, or PostgreSQL when configured
        if manifest is None:
            return None
        version = str(manifest["store"])
        with self._lock:
            cached = self._open.get(name)
            if cached is not None and cached[0] == version:
                return cached[1]
        kb = KnowledgeBase(name, kb_path(name), manifest, self.device)
        with self._lock:
            self._open[name] = (version, kb)
        return kb

    def forget(self, name: str) -> None:
        with self._lock:
            self._open.pop(name, None)


def search_store(
    kb: KnowledgeBase,
    files: Sequence[VSFileRecord],
    queries: Sequence[str],
    query_vectors: Sequence[Any],
    k: int,
    where: Filters | None = None,
    score_threshold: float | None = None,
    bm25_weight: float | None = None,
    dense_weight: float | None = None,
) -> list[StoreHit]:
    """The best ``k`` chunks of the completed ``files`` that pass ``where``, for any of
    ``queries`` (a chunk found by several keeps its best score).

    Scores are the knowledge base's convex hybrid fusion divided by the sum of the weights,
    so they lie in [0, 1] and ``score_threshold`` means the same for any weights.
    """
    defaults = RetrieveConfig()
    w_bm25 = defaults.bm25_weight if bm25_weight is None else bm25_weight
    w_dense = defaults.dense_weight if dense_weight is None else dense_weight
    total = w_bm25 + w_dense
    if total <= 0:
        return []
    by_doc = {f.doc_id: f for f in files if f.status == "completed" and f.doc_id}
    allowed = [d for d, f in by_doc.items() if matches(where, f.attributes)]
    if not allowed:
        return []
    best: dict[str, StoreHit] = {}
    for query, vector in zip(queries, query_vectors, strict=True):
        hits = kb.search(
            query,
            k=k,
            mode="hybrid",
            where=Filter(doc_ids=tuple(allowed)),
            candidates=defaults.candidates,
            fusion="convex",
            bm25_weight=w_bm25,
            dense_weight=w_dense,
            query_vector=vector,
        )
        for hit in hits:
            score = hit.score / total
            known = best.get(hit.chunk.chunk_id)
            if hit.chunk.doc_id in by_doc and (known is None or score > known.score):
                best[hit.chunk.chunk_id] = StoreHit(by_doc[hit.chunk.doc_id], hit.chunk, score)
    ranked = sorted(best.values(), key=lambda h: -h.score)
    if score_threshold is not None:
        ranked = [h for h in ranked if h.score >= score_threshold]
    return ranked[:k]
