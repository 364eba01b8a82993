"""Hybrid fusion settings on two data sets, so the defaults are not tuned on one of them.

For BEIR SciFact (claims -> abstracts) and COVID-QA (questions -> their article, which is
long and split into chunks), each corpus is ingested through ragtune's pipeline with the
default chunking, every query's top BM25 and dense candidates (100 each, the default)
are retrieved once, and every fusion setting is scored on them with nDCG@10 at the
document level. Prints JSON and a one-line summary.

    python bench/fusion.py [--backend onnx] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ragtune.evaluate.metrics import ndcg_at_k
from ragtune.evaluate.retrieval import doc_ranking, read_qrels, read_queries
from ragtune.ingest.pipeline import ingest
from ragtune.retrieve.fusion import convex_combination_fusion, reciprocal_rank_fusion
from ragtune.retrieve.kb import KnowledgeBase
from ragtune.types import Hit

GRID: list[tuple[str, int, float]] = [
    (fusion, k, w)
    for fusion, ks in (("rrf", (10, 20, 60)), ("convex", (0,)))
    for k in ks
    for w in (0.5, 0.75, 1.0, 1.25, 1.5)
]


def covidqa_as_beir(squad: Path, out: Path) -> tuple[Path, Path, Path]:
    """COVID-QA's articles as a BEIR corpus, its questions as queries, qrels question->article."""
    data = json.loads(squad.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = out / "corpus.jsonl", out / "queries.jsonl", out / "qrels.tsv"
    with open(corpus, "w") as c, open(queries, "w") as q, open(qrels, "w") as r:
        r.write("query-id\tcorpus-id\tscore\n")
        for article in data["data"]:
            for para in article["paragraphs"]:
                doc = str(para["document_id"])
                c.write(json.dumps({"_id": doc, "title": "", "text": para["context"]}) + "\n")
                for qa in para["qas"]:
                    q.write(json.dumps({"_id": str(qa["id"]), "text": qa["question"]}) + "\n")
                    r.write(f"{qa['id']}\t{doc}\t1\n")
    return corpus, queries, qrels


def fuse(bm25: list[Hit], dense: list[Hit], fusion: str, k: int, w: float) -> list[str]:
    if fusion == "rrf":
        ids = [[h.chunk.chunk_id for h in bm25], [h.chunk.chunk_id for h in dense]]
        fused = reciprocal_rank_fusion(ids, weights=[w, 1.0], k=k)
    else:
        scored = [{h.chunk.chunk_id: h.score for h in hits} for hits in (bm25, dense)]
        fused = convex_combination_fusion(scored, weights=[w, 1.0])
    doc_of = {h.chunk.chunk_id: h.chunk.doc_id for h in [*bm25, *dense]}
    return list(dict.fromkeys(doc_of[c] for c, _ in fused))


def study(name: str, corpus: Path, queries: Path, qrels: Path, backend: str) -> dict[str, Any]:
    kb_name = f"bench-fusion-{name}-{backend}"
    t0 = time.perf_counter()
    report = ingest([corpus], kb_name, backend=backend)  # type: ignore[arg-type]
    build_s = time.perf_counter() - t0
    kb = KnowledgeBase.open(kb_name)
    text = read_queries(queries)
    judged = read_qrels(qrels)
    qids = [q for q in text if q in judged]
    vectors = kb.embed_queries([text[q] for q in qids])
    runs: dict[str, list[float]] = {}
    single: dict[str, list[float]] = {"bm25": [], "dense": []}
    for qid, vec in zip(qids, vectors, strict=True):
        bm25 = kb.search(text[qid], k=100, mode="bm25")
        dense = kb.search(text[qid], k=100, mode="dense", query_vector=vec)
        single["bm25"].append(ndcg_at_k(doc_ranking(bm25), judged[qid], 10))
        single["dense"].append(ndcg_at_k(doc_ranking(dense), judged[qid], 10))
        for fusion, k, w in GRID:
            key = f"{fusion} k={k} w_bm25={w}" if fusion == "rrf" else f"convex w_bm25={w}"
            ranking = fuse(bm25, dense, fusion, k, w)
            runs.setdefault(key, []).append(ndcg_at_k(ranking, judged[qid], 10))
    mean = {key: sum(v) / len(v) for key, v in runs.items()}
    return {
        "queries": len(qids),
        "documents": report.documents,
        "chunks": report.chunks,
        "ingest_s": build_s,
        "bm25": sum(single["bm25"]) / len(qids),
        "dense": sum(single["dense"]) / len(qids),
        "hybrid": mean,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data"
    )
    ap.add_argument("--backend", default="onnx", choices=["torch", "onnx", "onnx-int8"])
    args = ap.parse_args()
    scifact = args.data / "scifact"
    covid = args.data / "covidqa" / "covidqa.json"
    if not scifact.exists() or not covid.exists():
        print(json.dumps({"skipped": f"data not found under {args.data}"}))
        return 0
    out: dict[str, Any] = {"backend": args.backend}
    out["scifact"] = study(
        "scifact", scifact / "corpus.jsonl", scifact / "queries.jsonl",
        scifact / "qrels" / "test.tsv", args.backend,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out["covidqa"] = study("covidqa", *covidqa_as_beir(covid, Path(tmp)), args.backend)
    print(json.dumps(out, indent=2))
    keys = list(out["scifact"]["hybrid"])
    both = sorted(
        keys, key=lambda k: -min(out["scifact"]["hybrid"][k], out["covidqa"]["hybrid"][k])
    )
    best = both[0]
    print(
        f"fusion ({args.backend}): best on both = {best}: SciFact "
        f"{out['scifact']['hybrid'][best]:.4f}, COVID-QA {out['covidqa']['hybrid'][best]:.4f}; "
        f"rrf k=60 w=1: {out['scifact']['hybrid']['rrf k=60 w_bm25=1.0']:.4f} / "
        f"{out['covidqa']['hybrid']['rrf k=60 w_bm25=1.0']:.4f}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
