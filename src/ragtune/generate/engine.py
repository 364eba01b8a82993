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
    def load(
        cls, name_or_path: str = "default", device: str = "auto", dtype: str = "auto"
    ) -> Generator:
        from ragtune.models import load_lm, resolve_lm

        model, tokenizer = load_lm(name_or_path, device=device, dtype=dtype)
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
        """Greedy decoding of one left-padded batch with a KV cache.

        Rows that finish (EOS or a stop string) leave the batch and the cache, so a batch
        costs what its answers need rather than ``rows × longest answer``.
        """
        import torch
        from transformers import DynamicCache

        tok = self.tokenizer
        width = max(len(ids) for ids in batch)
        pad, eos = tok.pad_token_id, tok.eos_token_id
        dev = self.device
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T)
        attention = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for row, ids in enumerate(batch):  # left padding: every row ends in the last column
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # (B, T): 0 at each row's start
        input_ids, attention, positions = input_ids.to(dev), attention.to(dev), positions.to(dev)
        stops = [s for s in stop if s]
        rows = list(range(len(batch)))  # original index of each row still decoding
        new: list[list[int]] = [[] for _ in batch]
        finish: list[Finish] = ["length"] * len(batch)
        t0 = time.perf_counter()
        with torch.inference_mode():
            cache = DynamicCache(config=self.model.config)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            next_pos = positions[:, -1] + 1  # (b,)
            for step in range(max_new_tokens):
                token = out.logits[:, -1].argmax(-1)  # (b,)
                keep = []
                for j, (r, t) in enumerate(zip(rows, token.tolist(), strict=True)):
                    if t == eos:
                        finish[r] = "eos"
                        continue
                    new[r].append(t)
                    if stops and any(
                        s in tok.decode(new[r], skip_special_tokens=True) for s in stops
                    ):
                        finish[r] = "stop"
                        continue
                    keep.append(j)
                if not keep or step == max_new_tokens - 1:
                    break
                if len(keep) < len(rows):  # drop finished rows from the batch and the cache
                    idx = torch.tensor(keep, device=dev)
                    cache.batch_select_indices(idx)
                    attention, next_pos, token = attention[idx], next_pos[idx], token[idx]
                    rows = [rows[j] for j in keep]
                attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=1)
                out = self.model(
                    input_ids=token[:, None],
                    attention_mask=attention,
                    position_ids=next_pos[:, None],
                    past_key_values=cache,
                    use_cache=True,
                )
                next_pos = next_pos + 1
        seconds = time.perf_counter() - t0
        gens = []
        for r, ids in enumerate(batch):
            text, _ = cut_at_stop(tok.decode(new[r], skip_special_tokens=True), stops)
            gens.append(
                Generation(
                    text=text.strip(),
                    prompt_tokens=len(ids),
                    new_tokens=len(new[r]),
                    finish=finish[r],
                    seconds=seconds,
                )
            )
        return gens
