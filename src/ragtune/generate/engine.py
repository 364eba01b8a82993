"""Batched greedy decoding with a KV cache: one loaded model, many prompts per forward pass.

Prompts are sorted by length and decoded in batches with left padding (so every row's
next token sits in the last column), which keeps padding waste low and the CPU busy;
results come back in the caller's order. Decoding is greedy, so results are
deterministic for a given model and prompt. A lock makes one ``Generator`` safe to
share between threads (e.g. the callers of a server).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ragtune.errors import RagtuneError
from ragtune.generate.prompts import STOP_STRINGS

if TYPE_CHECKING:
    import torch

Finish = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class Generation:
    text: str  # the continuation, cut before the first stop string, stripped
    prompt_tokens: int
    new_tokens: int  # tokens generated for this prompt (up to its stop)
    finish: Finish
    seconds: float  # wall time of the batch this prompt was decoded in


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest occurrence of any stop string."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _stop_criteria(tokenizer: Any, stop: Sequence[str], width: int) -> Any:
    """Per-row stopping once a row's new text contains a stop string.

    transformers' own ``stop_strings`` pre-processes the whole vocabulary on every call
    (seconds for a 262k vocabulary); decoding each row's few new tokens per step is cheap.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    stops = [s for s in stop if s]

    class _StopStrings(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            new = tokenizer.batch_decode(input_ids[:, width:], skip_special_tokens=True)
            done = [any(s in text for s in stops) for text in new]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_StopStrings()] if stops else [])


class Generator:
    """Wraps a causal LM and its tokenizer. Build with :meth:`load` or from objects."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self._lock = threading.Lock()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def load(cls, name_or_path: str = "default", device: str = "auto") -> Generator:
        from ragtune.models import load_lm, resolve_lm

        model, tokenizer = load_lm(name_or_path, device=device)
        return cls(model, tokenizer, name=str(resolve_lm(name_or_path)))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        stop: Sequence[str] = STOP_STRINGS,
        batch_size: int = 16,
        progress: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        """Greedy continuations of ``prompts``, in order. ``progress(n)`` after each batch."""
        if max_new_tokens < 1 or batch_size < 1:
            raise RagtuneError("max_new_tokens and batch_size must be at least 1")
        encoded = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        for i, ids in enumerate(encoded):
            if len(ids) + max_new_tokens > self.max_context:
                raise RagtuneError(
                    f"Prompt {i} has {len(ids)} tokens; with {max_new_tokens} new tokens it "
                    f"exceeds the model's context of {self.max_context}",
                    "retrieve fewer or shorter passages (-k, --context-tokens)",
                )
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        results: list[Generation | None] = [None] * len(prompts)
        with self._lock:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                outs = self._generate_batch([encoded[i] for i in idx], max_new_tokens, stop)
                for i, out in zip(idx, outs, strict=True):
                    results[i] = out
                if progress is not None:
                    progress(len(idx))
        return [r for r in results if r is not None]

    def _generate_batch(
        self, batch: list[list[int]], max_new_tokens: int, stop: Sequence[str]
    ) -> list[Generation]:
        import torch

        tok = self.tokenizer
        width = max(len(ids) for ids in batch)
        pad = tok.pad_token_id
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T)
        attention = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for row, ids in enumerate(batch):  # left padding
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        eos = tok.eos_token_id
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
                eos_token_id=eos,
                stopping_criteria=_stop_criteria(tok, stop, width),
                use_cache=True,
            )
        seconds = time.perf_counter() - t0
        new = out[:, width:].tolist()  # (B, N)
        gens = []
        for ids, row in zip(batch, new, strict=True):
            finish: Finish = "length"
            if eos in row:
                row = row[: row.index(eos)]
                finish = "eos"
            while row and row[-1] == pad:
                row = row[:-1]
            text, stopped = cut_at_stop(tok.decode(row, skip_special_tokens=True), stop)
            if stopped:
                finish = "stop"
            gens.append(
                Generation(
                    text=text.strip(),
                    prompt_tokens=len(ids),
                    new_tokens=len(row),
                    finish=finish,
                    seconds=seconds,
                )
            )
        return gens
