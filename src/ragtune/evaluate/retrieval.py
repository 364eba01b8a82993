"""Retrieval evaluation on a BEIR-layout data set, through the real product path.

The corpus is ingested into a knowledge base (``eval-<hash>``, reused while the corpus
and settings are unchanged) with the default chunking, every query is searched in each
mode, and chunk rankings become document rankings (a document ranks where its best
chunk ranks), which are scored against the qrels as BEIR does.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ragtune.config import EmbedBackend, Fusion
from ragtune.errors import RagtuneError
from ragtune.evaluate.metrics import mrr_at_k, ndcg_at_k, recall_at_k
from ragtune.types import Hit, SearchMode

Progress = Callable[[str, int, int], None]


SEARCH_BATCH = 256  # queries searched together in eval retrieval


def read_queries(path: Path) -> dict[str, str]:
    """BEIR queries.jsonl: one ``{"_id", "text"}`` per line."""
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    out[str(rec["_id"])] = str(rec["text"])
                except (ValueError, KeyError, TypeError):
                    raise RagtuneError(
                        f"{path}:{n}: not a BEIR query record",
                        'each line must be {"_id": ..., "text": ...}',
                    ) from None
    except OSError as e:
        raise RagtuneError(f"Cannot read queries {path}: {e.strerror}") from None
    return out


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV (``query-id  corpus-id  score``, header optional) -> query -> doc -> grade."""
    qrels: dict[str, dict[str, int]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            for n, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
                if not row or (n == 1 and row[0] == "query-id"):
                    continue
                if len(row) < 3:
                    raise RagtuneError(f"{path}:{n}: expected query-id, corpus-id, score")
                try:
                    grade = int(float(row[2]))
                except ValueError:
                    raise RagtuneError(f"{path}:{n}: score {row[2]!r} is not a number") from None
                qrels.setdefault(row[0], {})[row[1]] = grade
    except OSError as e:
        raise RagtuneError(f"Cannot read qrels {path}: {e.strerror}") from None
    return qrels


def doc_ranking(hits: Sequence[Hit]) -> list[str]:
    """Document ids in the order of their best-ranked chunk."""
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(h.chunk.doc_id, None)
    return list(seen)


def score_rankings(
    rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]
) -> dict[str, float]:
    """Mean nDCG@10, recall@10, recall@100 and MRR@10 over the queries in ``rankings``."""
    n = max(1, len(rankings))
    return {
        "ndcg@10": sum(ndcg_at_k(r, qrels[q], 10) for q, r in rankings.items()) / n,
        "recall@10": sum(recall_at_k(r, qrels[q], 10) for q, r in rankings.items()) / n,
        "recall@100": sum(recall_at_k(r, qrels[q], 100) for q, r in rankings.items()) / n,
        "mrr@10": sum(mrr_at_k(r, qrels[q], 10) for q, r in rankings.items()) / n,
    }


def eval_kb_name(corpus: Path, embedder: str | None, backend: str | None) -> str:
    h = hashlib.sha256()
    with open(corpus, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    h.update(f"{embedder}|{backend}".encode())
    return f"eval-{h.hexdigest()[:16]}"


def evaluate_retrieval(
    corpus: Path,
    queries: Path,
    qrels: Path,
    modes: Sequence[SearchMode] = ("bm25", "dense", "hybrid"),
    embedder: str | None = None,
    backend: EmbedBackend | None = None,
    device: str = "auto",
    fusion: Fusion | None = None,
    rrf_k: int | None = None,
    bm25_weight: float | None = None,
    dense_weight: float | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Metrics per mode, plus ``_meta`` (queries, documents, chunks, knowledge base)."""
    from ragtune.config import RetrieveConfig
    from ragtune.ingest.pipeline import ingest
    from ragtune.retrieve.kb import KnowledgeBase

    for p in (corpus, queries, qrels):
        if not Path(p).is_file():
            raise RagtuneError(f"File not found: {p}")
    query_text = read_queries(queries)
    judgements = read_qrels(qrels)
    qids = [q for q in query_text if any(g > 0 for g in judgements.get(q, {}).values())]
    if not qids:
        raise RagtuneError("No query has a relevant document in the qrels", f"check {qrels}")
    name = eval_kb_name(corpus, embedder, backend)
    report = ingest(
        [corpus], name, embedder=embedder, backend=backend, device=device, progress=progress
    )
    kb = KnowledgeBase.open(name, device=device)
    n_docs, n_chunks = kb.count()
    # Enough chunks to rank 100 distinct documents when documents have several chunks.
    depth = min(n_chunks, 100 * max(1, math.ceil(n_chunks / max(1, n_docs))))
    defaults = RetrieveConfig()
    results: dict[str, Any] = {}
    for mode in modes:
        rankings: dict[str, list[str]] = {}
        # In batches: only the ranked document ids are kept, never every query's hits.
        for start in range(0, len(qids), SEARCH_BATCH):
            batch = qids[start : start + SEARCH_BATCH]
            hits = kb.search_many(
                [query_text[q] for q in batch],
                k=depth,
                mode=mode,
                candidates=depth,
                fusion=fusion if fusion is not None else defaults.fusion,
                rrf_k=rrf_k if rrf_k is not None else defaults.rrf_k,
                bm25_weight=bm25_weight if bm25_weight is not None else defaults.bm25_weight,
                dense_weight=dense_weight if dense_weight is not None else defaults.dense_weight,
            )
            rankings.update((q, doc_ranking(h)) for q, h in zip(batch, hits, strict=True))
            if progress:
                progress("search", len(batch), len(qids) * len(modes))
        results[mode] = score_rankings(rankings, judgements)
    results["_meta"] = {
        "queries": len(qids),
        "documents": n_docs,
        "chunks": n_chunks,
        "depth_chunks": depth,
        "knowledge_base": name,
        "skipped_records": len(report.skipped),
        "embedder": kb.manifest["embedder"],
        "config": kb.manifest["config"],
    }
    return results
