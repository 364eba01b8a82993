"""Reading a BEIR-layout data set (corpus.jsonl, queries.jsonl, qrels/test.tsv) for tests."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Beir:
    doc_ids: list[str]
    doc_texts: list[str]  # title + " " + text, as in BEIR's and bm25s' evaluations
    queries: dict[str, str]  # query id -> text, only queries with qrels
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> grade


def load_beir(folder: Path, split: str = "test") -> Beir:
    doc_ids, texts = [], []
    with open(folder / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            doc_ids.append(str(d["_id"]))
            texts.append(f"{d.get('title', '')} {d['text']}")
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / f"{split}.tsv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            q = json.loads(line)
            if str(q["_id"]) in qrels:
                queries[str(q["_id"])] = q["text"]
    return Beir(doc_ids, texts, queries, qrels)
