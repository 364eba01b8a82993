from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from ragtune.errors import RagtuneError
from ragtune.retrieve.rerank import CrossEncoderReranker, relevance_scores, reranked
from ragtune.types import Chunk, Hit


def make_hits(texts: list[str]) -> list[Hit]:
    return [
        Hit(
            chunk=Chunk(f"d{i}#0", f"d{i}", 0, text, 0, len(text)),
            score=1.0 / (i + 1),
            rank=i + 1,
            scores={"bm25": float(10 - i)},
        )
        for i, text in enumerate(texts)
    ]


@pytest.fixture(scope="module")
def tiny_cross_encoder(tiny_embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BertForSequenceClassification (1 label) with the tiny embedder's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_cross_encoder")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_embedder))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=1,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_relevance_scores() -> None:
    np.testing.assert_array_equal(relevance_scores(np.array([[0.5], [2.0]])), [0.5, 2.0])
    np.testing.assert_array_equal(relevance_scores(np.array([[1.0, 3.0], [2.0, 0.0]])), [2.0, -2.0])
    with pytest.raises(RagtuneError):
        relevance_scores(np.zeros((2, 3)))


def test_reranked_orders_renumbers_and_keeps_scores() -> None:
    hits = make_hits(["a", "b", "c"])
    out = reranked(hits, np.array([0.1, 0.9, 0.1]))
    assert [h.chunk.chunk_id for h in out] == ["d1#0", "d0#0", "d2#0"]  # ties keep input order
    assert [h.rank for h in out] == [1, 2, 3]
    assert out[0].score == pytest.approx(0.9)
    assert out[0].scores == {"bm25": 9.0, "fused": 0.5, "rerank": pytest.approx(0.9)}
    assert [h.chunk.chunk_id for h in reranked(hits, np.array([3.0, 2.0, 1.0]), top_n=2)] == [
        "d0#0",
        "d1#0",
    ]


def test_cross_encoder_reranks_by_model_score(tiny_cross_encoder: Path) -> None:
    texts = ["the capital of France is Paris", "grass is green", "the quick brown fox", "x"]
    reranker = CrossEncoderReranker(tiny_cross_encoder, device="cpu", batch_size=3)
    out = reranker.rerank("What is the capital of France?", make_hits(texts))

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_cross_encoder))
    model = BertForSequenceClassification.from_pretrained(str(tiny_cross_encoder)).eval()
    with torch.inference_mode():
        enc = tokenizer(
            ["What is the capital of France?"] * 4, texts, padding=True, return_tensors="pt"
        )
        expected = model(**enc).logits[:, 0].numpy()
    order = np.argsort(-expected, kind="stable")
    assert [h.chunk.text for h in out] == [texts[i] for i in order]
    np.testing.assert_allclose([h.scores["rerank"] for h in out], expected[order], atol=1e-5)
    assert [h.rank for h in out] == [1, 2, 3, 4]
    assert reranker.rerank("q", []) == []
    assert len(reranker.rerank("q", make_hits(texts), top_n=2)) == 2


def test_cross_encoder_missing_folder(tmp_path: Path, tiny_cross_encoder: Path) -> None:
    with pytest.raises(RagtuneError, match="Reranker not found"):
        CrossEncoderReranker(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_cross_encoder, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(RagtuneError, match="Could not load a cross-encoder"):
        CrossEncoderReranker(broken, device="cpu").load()
