from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ragtune.errors import RagtuneError
from ragtune.evaluate.metrics import mean_over_queries, ndcg_at_k
from ragtune.retrieve.bm25 import (
    MANIFEST_NAME,
    NPZ_NAME,
    STOPWORDS_EN,
    BM25Index,
    idf,
    tf_saturation,
    tokenize,
    top_k_positive,
)
from tests.conftest import shared_data

# Three documents; after tokenizing: d0 = [cat, cat, dog] (|d| = 3), d1 = [dog, fish] (2),
# d2 = [bird] (1), so N = 3 and avgdl = 2.
DOCS = ["The cat and the cat, a dog.", "dog fish", "bird"]


def test_tokenize_lowercases_drops_stopwords_and_short_tokens_and_stems() -> None:
    assert tokenize("The Running dogs are in the houses, a b c!") == ["run", "dog", "hous"]
    assert tokenize("") == []
    assert tokenize("Über naïve café") == ["über", "naïv", "café"]


def test_stopwords_are_lucenes_33() -> None:
    assert len(STOPWORDS_EN) == 33
    assert {"a", "the", "with", "such"} <= STOPWORDS_EN


def test_idf_and_tf_saturation_formulas() -> None:
    # idf = ln(1 + (N - df + 0.5) / (df + 0.5)); N = 3, df = 1 -> ln(1 + 2.5 / 1.5) = ln(8/3)
    assert idf(np.array([1.0]), 3)[0] == pytest.approx(math.log(8 / 3))
    # tf = 2, |d| = 3, avgdl = 2, k1 = 1.5, b = 0.75: 2 / (2 + 1.5 * (0.25 + 0.75 * 1.5))
    got = tf_saturation(np.array([2.0]), np.array([3.0]), 2.0, 1.5, 0.75)[0]
    assert got == pytest.approx(2 / 4.0625)


def test_scores_match_hand_computation() -> None:
    index = BM25Index.build(DOCS)
    assert index.n_docs == 3
    # "cat": df = 1, idf = ln(8/3) = 0.980829; d0: tf = 2, norm = 1.5 * (0.25 + 0.75 * 3/2)
    # = 2.0625, so 0.980829 * 2 / 4.0625 = 0.482870.
    np.testing.assert_allclose(index.scores("cat"), [math.log(8 / 3) * 2 / 4.0625, 0, 0])
    # "dog": df = 2, idf = ln(1 + 1.5 / 2.5) = ln(1.6) = 0.470004;
    # d0: tf = 1, 1 / (1 + 2.0625) = 0.326531 -> 0.153471;
    # d1: tf = 1, |d| = 2, norm = 1.5 -> 1 / 2.5 = 0.4 -> 0.188002.
    np.testing.assert_allclose(
        index.scores("dogs"), [math.log(1.6) / 3.0625, math.log(1.6) * 0.4, 0]
    )
    assert index.scores("zebra").tolist() == [0, 0, 0]


def test_k1_and_b_are_query_time_parameters() -> None:
    index = BM25Index.build(DOCS)
    # b = 0: no length normalisation, "dog" has tf = 1 in d0 and d1: 1 / (1 + 1.5) = 0.4 each.
    np.testing.assert_allclose(index.scores("dog", k1=1.5, b=0.0), [0.4 * math.log(1.6)] * 2 + [0])
    # k1 = 0: tf saturates at once, every matching doc gets the idf.
    np.testing.assert_allclose(index.scores("cat", k1=0.0, b=0.75), [math.log(8 / 3), 0, 0])
    with pytest.raises(RagtuneError):
        index.scores("dog", b=1.5)


def test_repeated_query_terms_count_each_time_like_bm25s() -> None:
    index = BM25Index.build(DOCS)
    np.testing.assert_allclose(
        index.scores("cat cat dog"), 2 * index.scores("cat") + index.scores("dog")
    )


def test_top_k_orders_by_score_then_row_and_keeps_only_positive_scores() -> None:
    index = BM25Index.build(DOCS)
    rows, scores = index.top_k("dog", k=10)
    assert rows.tolist() == [1, 0]  # d1 (shorter) beats d0
    assert scores[0] > scores[1] > 0
    rows, _ = index.top_k("dog", k=10, b=0.0)  # a tie: lower row first
    assert rows.tolist() == [0, 1]
    assert index.top_k("dog", k=1)[0].tolist() == [1]
    assert index.top_k("zebra", k=10)[0].tolist() == []


def test_top_k_mask_is_an_allow_list() -> None:
    index = BM25Index.build(DOCS)
    rows, _ = index.top_k("dog", k=10, mask=np.array([True, False, True]))
    assert rows.tolist() == [0]
    with pytest.raises(RagtuneError):
        index.top_k("dog", k=10, mask=np.array([True]))


def test_top_k_positive_breaks_ties_at_the_cut_by_index() -> None:
    scores = np.array([1.0, 3.0, 2.0, 2.0, 0.0, 2.0])
    rows, values = top_k_positive(scores, 3)
    assert rows.tolist() == [1, 2, 3]
    assert values.tolist() == [3.0, 2.0, 2.0]
    assert top_k_positive(scores, 0)[0].tolist() == []


def test_add_equals_building_everything_at_once() -> None:
    more = ["cat bird bird", "fish and chips"]
    whole = BM25Index.build(DOCS + more)
    grown = BM25Index.build(DOCS).add(more)
    for query in ["cat", "bird fish", "chips dog"]:
        np.testing.assert_allclose(grown.scores(query), whole.scores(query))
    assert grown.n_docs == 5


def test_add_leaves_the_original_index_untouched() -> None:
    index = BM25Index.build(DOCS)
    index.add(["cat"])
    assert index.n_docs == 3
    np.testing.assert_allclose(index.scores("cat")[0], math.log(8 / 3) * 2 / 4.0625)


def test_remove_equals_building_without_those_rows() -> None:
    whole = BM25Index.build(["cat bird bird", *DOCS, "fish and chips"])
    removed = whole.remove(np.array([0, 4]))
    expected = BM25Index.build(DOCS)
    for query in ["cat", "bird fish", "chips dog"]:
        np.testing.assert_allclose(removed.scores(query), expected.scores(query))
    with pytest.raises(RagtuneError):
        whole.remove(np.array([5]))


def test_empty_index() -> None:
    index = BM25Index.build([])
    assert index.scores("cat").shape == (0,)
    assert index.top_k("cat", 5)[0].tolist() == []
    assert index.add(["cat"]).top_k("cat", 5)[0].tolist() == [0]


def test_save_load_roundtrip(tmp_path: Path) -> None:
    index = BM25Index.build(DOCS).add(["cat bird"]).remove(np.array([1]))
    index.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25")
    assert loaded.vocab == index.vocab
    for query in ["cat", "dog bird", "fish"]:
        np.testing.assert_array_equal(loaded.scores(query), index.scores(query))
    manifest = json.loads((tmp_path / "bm25" / MANIFEST_NAME).read_text())
    assert manifest["format_version"] == "1.0"
    assert manifest["n_docs"] == 3
    assert not [p.name for p in (tmp_path / "bm25").iterdir() if p.name.endswith(".tmp")]
    BM25Index.build([]).save(tmp_path / "empty")
    assert BM25Index.load(tmp_path / "empty").n_docs == 0


def test_load_rejects_unknown_major_version(tmp_path: Path) -> None:
    BM25Index.build(DOCS).save(tmp_path)
    manifest_path = tmp_path / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = "2.0"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RagtuneError, match=r"format version 2\.0"):
        BM25Index.load(tmp_path)


def test_load_rejects_missing_or_mismatched_files(tmp_path: Path) -> None:
    with pytest.raises(RagtuneError, match="No BM25 index"):
        BM25Index.load(tmp_path)
    BM25Index.build(DOCS).save(tmp_path)
    BM25Index.build(["other"]).save(tmp_path / "other")
    (tmp_path / "other" / NPZ_NAME).replace(tmp_path / NPZ_NAME)
    with pytest.raises(RagtuneError, match="does not match its manifest"):
        BM25Index.load(tmp_path)


@pytest.mark.integration
def test_scifact_parity_with_bm25s() -> None:
    """Our BM25 against bm25s (lucene, k1 = 1.5, b = 0.75, en stop words, PyStemmer)."""
    from tests.retrieve.beir import bm25s_top10, load_beir

    data = load_beir(shared_data("scifact"))
    qids = sorted(data.queries)[:100]
    index = BM25Index.build(data.doc_texts)
    ref_rows, ref_scores = bm25s_top10(data.doc_texts, [data.queries[q] for q in qids])
    ours, theirs = {}, {}
    for i, qid in enumerate(qids):
        rows, scores = index.top_k(data.queries[qid], k=10)
        np.testing.assert_allclose(scores, ref_scores[i][: len(scores)], rtol=1e-5)
        ours[qid] = [data.doc_ids[r] for r in rows]
        theirs[qid] = [data.doc_ids[r] for r in ref_rows[i]]
    qrels = {q: data.qrels[q] for q in qids}
    ndcg_ours = mean_over_queries(ndcg_at_k, ours, qrels, 10)
    ndcg_theirs = mean_over_queries(ndcg_at_k, theirs, qrels, 10)
    assert abs(ndcg_ours - ndcg_theirs) <= 0.01
    assert sum(ours[q] == theirs[q] for q in qids) >= 95  # ties in float32 may swap a pair
