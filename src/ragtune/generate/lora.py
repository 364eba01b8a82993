"""Many LoRA adapters on one base, applied per row in one batch (S-LoRA / Punica idea).

S-LoRA (Sheng et al. 2023, arXiv:2311.03285) and Punica (Chen et al. 2023,
arXiv:2310.18547) keep one copy of the base weights and compute ``x W`` once for the
whole batch, then add each row's own low-rank delta ``s · (x A_a^T) B_a^T``. Here every
loaded adapter occupies a slot of a preallocated bank; for a projection the bank holds
all slots' ``A`` stacked (slots·R, in) and ``s·B^T`` stacked (slots·R, out). A step computes
``x @ A_all^T`` for all rows, zeroes the columns that are not the row's adapter (a 0/1
mask built once per step), and adds ``(·) @ B_all``: two dense matmuls per projection
whatever the mix of adapters, with no per-row gathers. Ranks smaller than the bank's R
are zero-padded (exact); q/k/v and gate/up are fused like the base weights, so their B
is block-diagonal.

Adapters are PEFT folders (``adapter_config.json`` + ``adapter_model.safetensors``), as
``ragtune tune --method lora`` writes them. They load lazily and are evicted least
recently used when the bank is full.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ragtune.errors import RagtuneError

# group -> the PEFT module names fused into it, in the fused weight's output order
GROUPS: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight$")


def resolve_adapter(path: str | os.PathLike[str]) -> Path:
    """A ``ragtune tune --method lora`` run folder (its ``adapter/``) or a PEFT folder."""
    p = Path(path).expanduser()
    if (p / "adapter" / "adapter_config.json").exists():
        p = p / "adapter"
    if not (p / "adapter_config.json").exists():
        raise RagtuneError(
            f"No LoRA adapter at {p} (no adapter_config.json)",
            "pass a run folder from `ragtune tune --method lora` or a PEFT adapter folder",
        )
    return p


@dataclass
class Adapter:
    """One adapter's weights: (layer, module) -> (A (r, in), s·B (out, r))."""

    rank: int
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class PeftLora:
    """A PEFT LoRA adapter as stored: (layer, module) -> (A (r, in), B (out, r)), and
    ``scale`` = ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), the factor on ``B A``."""

    rank: int
    alpha: float
    scale: float
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


def read_peft_lora(folder: Path) -> PeftLora:
    """Read a PEFT LoRA folder, refusing what the engine cannot apply."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save")
                   if cfg.get(k)]  # fmt: skip
    if unsupported or cfg.get("peft_type", "LORA") != "LORA":
        raise RagtuneError(
            f"Adapter {folder} uses {', '.join(unsupported) or cfg.get('peft_type')}, "
            "which the multi-adapter engine does not support",
            "serve the run's merged model instead (Generator.load(RUN_DIR))",
        )
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
    file = folder / "adapter_model.safetensors"
    if not file.exists():
        raise RagtuneError(f"{folder} has no adapter_model.safetensors", "re-save the adapter")
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    known = {m for mods in GROUPS.values() for m in mods}
    for key, t in load_file(str(file)).items():
        m = _KEY.search(key)
        if m is None or m.group(2) not in known:
            raise RagtuneError(
                f"Adapter {folder} has a weight the engine cannot apply: {key}",
                "only q/k/v/o and gate/up/down projections are supported",
            )
        parts.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t.float()
    weights = {k: (v["A"], v["B"]) for k, v in parts.items()}
    return PeftLora(rank=r, alpha=alpha, scale=scale, weights=weights)


def read_adapter(folder: Path) -> Adapter:
    """Read a PEFT LoRA adapter for the bank, the scale folded into B."""
    peft = read_peft_lora(folder)
    weights = {k: (a, b * peft.scale) for k, (a, b) in peft.weights.items()}
    return Adapter(rank=peft.rank, weights=weights)


class AdapterBank:
    """Preallocated slots for ``capacity`` adapters, LRU-managed (see module doc)."""

    def __init__(self, n_layers: int, dims: dict[str, tuple[int, tuple[int, ...]]],
                 capacity: int, dtype: torch.dtype, device: torch.device) -> None:  # fmt: skip
        self.n_layers, self.dims = n_layers, dims
        self.capacity, self.dtype, self.device = capacity, dtype, device
        self.rank = 0
        self.A: list[dict[str, torch.Tensor]] = []
        self.B: list[dict[str, torch.Tensor]] = []
        self.loaded: OrderedDict[str, int] = OrderedDict()  # name -> slot, LRU first
        self.adapters: dict[int, Adapter] = {}
        self.refs = [0] * capacity

    # -- storage ----------------------------------------------------------------------
    def _allocate(self, rank: int) -> None:
        self.rank = rank
        self.A, self.B = [], []
        for _ in range(self.n_layers):
            a, b = {}, {}
            for g, (d_in, outs) in self.dims.items():
                width = self.capacity * rank * len(outs)
                a[g] = torch.zeros((width, d_in), dtype=self.dtype, device=self.device)
                b[g] = torch.zeros((width, sum(outs)), dtype=self.dtype, device=self.device)
            self.A.append(a)
            self.B.append(b)
        for slot, ad in self.adapters.items():
            self._place(slot, ad)

    def _place(self, slot: int, ad: Adapter) -> None:
        R = self.rank
        for layer in range(self.n_layers):
            for g, (_, outs) in self.dims.items():
                rg = R * len(outs)
                a, b = self.A[layer][g], self.B[layer][g]
                a[slot * rg : (slot + 1) * rg].zero_()
                b[slot * rg : (slot + 1) * rg].zero_()
                col = 0
                for p, (mod, width) in enumerate(zip(GROUPS[g], outs, strict=True)):
                    w = ad.weights.get((layer, mod))
                    if w is not None:
                        A, Bs = w
                        if A.shape[1] != a.shape[1] or Bs.shape[0] != width:
                            raise RagtuneError(
                                f"Adapter shapes do not match the base model at layer {layer} "
                                f"{mod}: A {tuple(A.shape)}, B {tuple(Bs.shape)}",
                                "use an adapter trained on this base model",
                            )
                        r0 = slot * rg + p * R
                        a[r0 : r0 + A.shape[0]] = A.to(self.dtype)
                        b[r0 : r0 + A.shape[0], col : col + width] = Bs.t().to(self.dtype)
                    col += width

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (*self.A, *self.B) for t in d.values())

    # -- LRU --------------------------------------------------------------------------
    def acquire(self, name: str, folder: Path) -> int | None:
        """The slot holding adapter ``name`` (loading it, evicting the least recently used
        idle adapter if needed), with a reference taken; None when every slot is busy."""
        slot = self.loaded.get(name)
        if slot is None:
            free = [s for s in range(self.capacity) if s not in self.loaded.values()]
            if not free:
                idle = [n for n, s in self.loaded.items() if self.refs[s] == 0]
                if not idle:
                    return None
                free = [self.loaded.pop(idle[0])]
                del self.adapters[free[0]]
            slot = min(free)
            ad = read_adapter(folder)
            with torch.inference_mode():
                if ad.rank > self.rank:
                    self._allocate(ad.rank)  # re-places the adapters already loaded
                self._place(slot, ad)
            self.adapters[slot] = ad
            self.loaded[name] = slot
        self.loaded.move_to_end(name)
        self.refs[slot] += 1
        return slot

    def release(self, slot: int) -> None:
        self.refs[slot] -= 1

    def evict(self, name: str) -> None:
        """Forget ``name`` if loaded and idle (its slot is reused)."""
        slot = self.loaded.get(name)
        if slot is not None and self.refs[slot] == 0:
            del self.loaded[name]
            del self.adapters[slot]

    # -- maths ------------------------------------------------------------------------
    def masks(self, rows: torch.Tensor) -> dict[str, Any] | None:
        """Per-step 0/1 column masks from rows' bank slots (B,) (-1 = base); None when no
        row uses an adapter."""
        hi = int(rows.max().item()) + 1
        if hi <= 0 or self.rank == 0:
            return None
        out: dict[str, Any] = {"hi": hi}
        for g, (_, outs) in self.dims.items():
            rg = self.rank * len(outs)
            col_slot = torch.arange(hi * rg, device=rows.device) // rg  # (hi*rg,)
            out[g] = (col_slot[None, :] == rows[:, None]).to(self.dtype)  # (B, hi*rg)
        return out

    def apply(self, masks: dict[str, Any], layer: int, group: str, x: torch.Tensor,
              y: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """``y + ((x @ A_all^T) * mask) @ B_all`` over the first ``hi`` slots."""
        n = masks["hi"] * self.rank * len(self.dims[group][1])
        xa = x @ self.A[layer][group][:n].t()  # (B, n)
        return torch.addmm(y, xa.mul_(masks[group]), self.B[layer][group][:n])
