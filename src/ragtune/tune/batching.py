"""Length-grouped batches: every example once per epoch, little padding, a fixed order per seed.

A *batch* is what one optimizer step sees (``batch_size`` examples). It is split into
*micro-batches* that fit a token budget (gradient accumulation), and under distributed
training each rank takes its share of every batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ragtune.tune.tokens import IGNORE, TokenSequence

if TYPE_CHECKING:
    import torch

MEGABATCH = 50  # batches per length-sorted group (the "megabatch" of HF's LengthGroupedSampler)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """Indices of each batch of one epoch: shuffle by (seed, epoch), sort each group of
    ``MEGABATCH`` batches by length, cut it into batches, then shuffle the batch order."""
    rng = random.Random(f"{seed}:{epoch}")  # str seeds hash deterministically (sha512)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * MEGABATCH
    batches: list[list[int]] = []
    for g in range(0, len(order), group):
        chunk = sorted(
            order[g : g + group], key=lambda i: -lengths[i]
        )  # stable: ties stay shuffled
        batches.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def rank_share(batch: Sequence[int], lengths: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's rows of a global batch: sorted by length, then every ``world``-th one."""
    ordered = sorted(batch, key=lambda i: (-lengths[i], i))
    return ordered[rank::world]


def micro_batches(rows: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split rows (longest first) into groups whose padded size ``rows x longest`` fits
    ``max_tokens``; a row longer than the budget gets a micro-batch of its own."""
    ordered = sorted(rows, key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    current: list[int] = []
    for i in ordered:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > max_tokens:
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out


def collate(
    seqs: Sequence[TokenSequence], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels``, each (B, T)."""
    import torch

    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)  # (B, T)
    for r, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[r, :n] = torch.from_numpy(s.input_ids)
        mask[r, :n] = 1
        labels[r, :n] = torch.from_numpy(s.labels)
    return ids.to(device), mask.to(device), labels.to(device)
