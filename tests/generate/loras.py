"""LoRA run folders for tests: random non-zero B, so an adapter changes the outputs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ragtune.models import describe, load_lm
from ragtune.tune.events import MANIFEST_VERSION, RUN_KIND
from ragtune.tune.lora import apply_lora


def make_lora_run(base: Path, out: Path, rank: int, seed: int, b_scale: float = 0.2) -> Path:
    """What `ragtune tune --method lora` leaves in ``out``: adapter/ (PEFT, alpha = 2r),
    merged/ and a manifest naming ``base``."""
    model, tok = load_lm(str(base), device="cpu", dtype="float32")
    peft_model = apply_lora(model, rank=rank, alpha=2 * rank, dropout=0.0, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * b_scale)
    peft_model.save_pretrained(out / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(out / "merged")
    tok.save_pretrained(out / "merged")
    manifest = {"format_version": MANIFEST_VERSION, "kind": RUN_KIND, "method": "lora",
                "base_model": describe(base), "status": "done"}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out
