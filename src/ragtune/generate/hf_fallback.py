"""Greedy decoding through transformers, for model architectures the native engine
(:mod:`ragtune.generate.gemma`) does not implement: left-padded batches with a KV cache,
rows leaving the batch as they finish."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ragtune.generate.engine import Finish, Generation, cut_at_stop


def generate_batch_hf(
    model: Any, tok: Any, batch: list[list[int]], max_new_tokens: int, stop: Sequence[str]
) -> list[Generation]:
    """Greedy decoding of one left-padded batch with a KV cache.

    Rows that finish (EOS or a stop string) leave the batch and the cache, so a batch
    costs what its answers need rather than ``rows × longest answer``.
    """
    import torch
    from transformers import DynamicCache

    width = max(len(ids) for ids in batch)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    dev = next(model.parameters()).device
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
        cache = DynamicCache(config=model.config)
        out = model(
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
                if stops and any(s in tok.decode(new[r], skip_special_tokens=True) for s in stops):
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
            out = model(
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
