"""Reading a BEIR-layout data set (corpus.jsonl, queries.jsonl, qrels/test.tsv) for tests."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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


def bm25s_top10(texts: list[str], queries: list[str]) -> tuple[Any, Any]:
    """bm25s's (rows, scores), each (n_queries, 10): lucene, k1 = 1.5, b = 0.75, English
    stop words, PyStemmer's English stemmer (skips the test when bm25s is missing)."""
    import pytest

    bm25s = pytest.importorskip("bm25s")
    stemmer = pytest.importorskip("Stemmer").Stemmer("english")
    reference = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    reference.index(
        bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
    return reference.retrieve(tokens, k=10, show_progress=False)
