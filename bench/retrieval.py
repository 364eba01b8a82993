"""Retrieval benchmarks on SciFact: prints one JSON object, then a one-line summary.

1. Corpus encoding speed (docs/s) of each ragtune embedding backend against
   sentence-transformers with the same model, measured in one run, interleaved round by
   round so that load from other processes hits every encoder alike.
2. The knowledge-base layer: index build time (``ragtune ingest`` of the same documents:
   chunking, embedding, LanceDB, BM25) and single-query latency p50/p95 of each search
   mode over SciFact's queries (query embedding included)::

    python bench/retrieval.py --subset 1000 --batch-size 32 --rounds 2

Skips cleanly (exit 0, ``{"skipped": ...}``) when the SciFact data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.models import resolve_embedder
from ragtune.retrieve.dense import embed, load_embedder, physical_cores

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
BACKENDS = ("torch", "onnx", "onnx-int8")

Encoder = Callable[[list[str]], np.ndarray]  # texts -> (N, D) vectors


def load_corpus(folder: Path, subset: int | None, seed: int = 0) -> list[str]:
    """SciFact documents as ``title + " " + text``; a fixed random subset when asked."""
    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        docs = [json.loads(line) for line in fh]
    texts = [f"{d.get('title', '')} {d['text']}" for d in docs]
    if subset is not None and subset < len(texts):
        rows = np.random.default_rng(seed).choice(len(texts), subset, replace=False)
        texts = [texts[i] for i in rows]
    return texts


def sentence_transformers_encoder(model: str, batch_size: int, max_seq_length: int) -> Encoder:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(resolve_embedder(model)), device="cpu")
    st.max_seq_length = max_seq_length

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(st.encode(texts, batch_size=batch_size, convert_to_numpy=True))

    return encode


def ragtune_encoder(model: str, backend: str, batch_size: int) -> Encoder:
    embedder = load_embedder(model, backend=backend, device="cpu")  # type: ignore[arg-type]

    def encode(texts: list[str]) -> np.ndarray:
        return embed(embedder, texts, batch_size=batch_size)

    return encode


def timed(encode: Encoder, texts: list[str]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = encode(texts)
    return time.perf_counter() - start, vectors


def cosine_agreement(vectors: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean and min cosine between matching rows of two (N, D) arrays."""
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cos = np.sum(a * b, axis=1)  # (N,)
    return {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6)}


def bench_encoding(
    texts: list[str], encoders: dict[str, Encoder], rounds: int, warmup: int = 32
) -> dict[str, Any]:
    """docs/s per encoder (best and median over rounds) and agreement with the first one."""
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    vectors: dict[str, np.ndarray] = {}
    for encode in encoders.values():
        encode(texts[:warmup])
    for _ in range(rounds):
        for name, encode in encoders.items():
            dt, vectors[name] = timed(encode, texts)
            seconds[name].append(dt)
    reference_name = next(iter(encoders))
    best_ref = len(texts) / min(seconds[reference_name])
    results: dict[str, Any] = {}
    for name in encoders:
        best = len(texts) / min(seconds[name])
        results[name] = {
            "docs_per_s_best": round(best, 2),
            "docs_per_s_median": round(len(texts) / statistics.median(seconds[name]), 2),
            "speedup_vs_" + reference_name: round(best / best_ref, 3),
            **cosine_agreement(vectors[name], vectors[reference_name]),
        }
    return results


def bench_knowledge_base(
    folder: Path, subset: int | None, backend: str, queries: int, seed: int = 0
) -> dict[str, Any]:
    """Ingest the same documents into a fresh knowledge base and time single queries."""
    import tempfile

    from ragtune.config import kb_path
    from ragtune.ingest.pipeline import ingest
    from ragtune.retrieve.kb import KnowledgeBase

    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        records = fh.readlines()
    if subset is not None and subset < len(records):
        rows = np.random.default_rng(seed).choice(len(records), subset, replace=False)
        records = [records[i] for i in sorted(rows)]
    with open(folder / "queries.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh][:queries]
    load_embedder("default", backend=backend, device="cpu")  # type: ignore[arg-type]
    name = f"bench-retrieval-{os.getpid()}"  # (the ONNX export above is cached, not timed)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(records), encoding="utf-8")
        start = time.perf_counter()
        report = ingest([corpus], name, backend=backend)  # type: ignore[arg-type]
        build_s = time.perf_counter() - start
        kb = KnowledgeBase.open(name)
        kb.search(texts[0], k=10, mode="hybrid")  # load the embedder before timing
        latency: dict[str, dict[str, float]] = {}
        for mode in ("bm25", "dense", "hybrid"):
            times = []
            for q in texts:
                t = time.perf_counter()
                kb.search(q, k=10, mode=mode)  # type: ignore[arg-type]
                times.append(time.perf_counter() - t)
            latency[mode] = {
                "p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
                "p95_ms": round(1000 * float(np.percentile(times, 95)), 2),
            }
    shutil.rmtree(kb_path(name), ignore_errors=True)
    return {
        "backend": backend,
        "documents": report.documents,
        "chunks": report.chunks,
        "build_s": round(build_s, 2),
        "build_docs_per_s": round(report.documents / build_s, 2),
        "queries": len(texts),
        "latency": latency,
    }


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "physical_cores": physical_cores(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--subset", type=int, default=1000, help="documents (0 = all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--model", default="default")
    parser.add_argument("--kb-backend", default="onnx", help="backend for the KB part")
    parser.add_argument("--queries", type=int, default=300, help="queries timed per mode")
    parser.add_argument("--skip-kb", action="store_true", help="encoding speed only")
    args = parser.parse_args(argv)

    if not (args.data / "corpus.jsonl").exists():
        print(json.dumps({"skipped": f"SciFact not found at {args.data}"}))
        return 0
    texts = load_corpus(args.data, args.subset or None)
    encoders = {
        "sentence-transformers": sentence_transformers_encoder(
            args.model, args.batch_size, args.max_seq_length
        )
    }
    for backend in args.backends.split(","):
        encoders[f"ragtune-{backend}"] = ragtune_encoder(args.model, backend, args.batch_size)
    report = {
        "benchmark": "corpus encoding",
        "data": str(args.data),
        "docs": len(texts),
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "rounds": args.rounds,
        "machine": machine(),
        "encoding": bench_encoding(texts, encoders, args.rounds),
    }
    if not args.skip_kb:
        report["knowledge_base"] = bench_knowledge_base(
            args.data, args.subset or None, args.kb_backend, args.queries
        )
    print(json.dumps(report, indent=2))
    summary = ", ".join(
        f"{name} {r['docs_per_s_best']} docs/s" for name, r in report["encoding"].items()
    )
    line = f"SciFact encoding ({len(texts)} docs, batch {args.batch_size}): {summary}"
    if "knowledge_base" in report:
        kb = report["knowledge_base"]
        lat = "; ".join(
            f"{m} p50 {v['p50_ms']} ms p95 {v['p95_ms']} ms" for m, v in kb["latency"].items()
        )
        line += f". Index build ({kb['backend']}) {kb['build_s']} s; query latency: {lat}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
