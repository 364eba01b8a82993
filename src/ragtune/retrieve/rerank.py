"""Optional reranking of retrieved hits with a local cross-encoder folder.

A cross-encoder reads the query and a passage together and outputs a relevance logit
(Nogueira & Cho 2019, "Passage re-ranking with BERT"). Any HF
``AutoModelForSequenceClassification`` folder with one output (a relevance score) or two
(not relevant / relevant) works.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.errors import RagtuneError
from ragtune.models import pick_device
from ragtune.types import Hit


def relevance_scores(logits: np.ndarray) -> np.ndarray:
    """(B, 1) logits -> the logit; (B, 2) -> ``logit[1] - logit[0]`` (log-odds of relevant)."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    if logits.shape[1] == 2:
        return logits[:, 1] - logits[:, 0]
    raise RagtuneError(
        f"A reranker must have 1 or 2 output labels, this one has {logits.shape[1]}",
        "pass a cross-encoder folder (sequence classification with 1 or 2 labels)",
    )


def reranked(hits: list[Hit], scores: np.ndarray, top_n: int | None = None) -> list[Hit]:
    """``hits`` sorted by ``scores`` (desc, ties keep input order), renumbered from rank 1.

    Each hit's ``score`` becomes its rerank score; ``scores`` gains ``"rerank"`` and keeps the
    previous (fused) score as ``"fused"``.
    """
    order = np.argsort(-scores, kind="stable")
    if top_n is not None:
        order = order[:top_n]
    out = []
    for rank, i in enumerate(order, start=1):
        hit, s = hits[int(i)], float(scores[int(i)])
        extra = {"fused": hit.score, "rerank": s}
        out.append(dataclasses.replace(hit, score=s, rank=rank, scores={**hit.scores, **extra}))
    return out


class CrossEncoderReranker:
    """Rerank hits with a local cross-encoder; the model loads on first use."""

    def __init__(self, folder: Path | str, device: str = "auto", batch_size: int = 16) -> None:
        self.folder = Path(folder).expanduser()
        if not (self.folder / "config.json").exists():
            raise RagtuneError(
                f"Reranker not found: {self.folder} (no config.json)",
                "pass a local cross-encoder folder (AutoModelForSequenceClassification)",
            )
        self.device = pick_device(device)
        self.batch_size = batch_size
        self._model: Any = None
        self._tokenizer: Any = None
        self._max_length = 512

    def load(self) -> CrossEncoderReranker:
        if self._model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
                model = AutoModelForSequenceClassification.from_pretrained(str(self.folder))
            except (OSError, ValueError) as e:
                raise RagtuneError(
                    f"Could not load a cross-encoder from {self.folder}: {e}"
                ) from None
            self._model = model.to(self.device).eval()
            limits = [getattr(model.config, "max_position_embeddings", 512) or 512]
            if self._tokenizer.model_max_length < 1e6:
                limits.append(int(self._tokenizer.model_max_length))
            self._max_length = min(limits)
        return self

    def score(self, query: str, passages: list[str]) -> np.ndarray:
        """Relevance of each passage to ``query``: (len(passages),) float32."""
        import torch

        self.load()
        out = []
        for start in range(0, len(passages), self.batch_size):
            batch = passages[start : start + self.batch_size]
            enc = self._tokenizer(
                [query] * len(batch),
                batch,
                padding=True,
                truncation="longest_first",
                max_length=self._max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                logits = self._model(**enc).logits.float().cpu().numpy()  # (B, n_labels)
            out.append(relevance_scores(logits))
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def rerank(self, query: str, hits: list[Hit], top_n: int | None = None) -> list[Hit]:
        """``hits`` reordered by cross-encoder score (see ``reranked``)."""
        if not hits:
            return []
        return reranked(hits, self.score(query, [h.chunk.text for h in hits]), top_n)
