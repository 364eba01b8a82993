"""Proof that fine-tuning changed the weights: relative change per module, ``||dW|| / ||W||``.

Both models are read tensor by tensor from their safetensors files (no model is built), so
a diff costs little memory. Norms are Frobenius norms; a module's change combines its
parameters (weight, bias), and the total is ``sqrt(sum ||dW||^2) / sqrt(sum ||W||^2)`` over
every parameter.
"""

from __future__ import annotations

import json
import math
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ragtune.errors import RagtuneError
from ragtune.models import resolve_lm
from ragtune.tune.events import read_manifest


@dataclass(frozen=True)
class ModuleChange:
    module: str  # parameter name without its last part, e.g. "model.layers.3.mlp.up_proj"
    params: int  # number of weights
    delta_norm: float  # ||W_tuned - W_base||
    base_norm: float  # ||W_base||

    @property
    def relative(self) -> float:
        if self.base_norm:
            return self.delta_norm / self.base_norm
        return math.inf if self.delta_norm else 0.0


@dataclass(frozen=True)
class WeightDiff:
    base: str
    tuned: str
    modules: list[ModuleChange]  # largest relative change first
    only_in_base: list[str] = field(default_factory=list)
    only_in_tuned: list[str] = field(default_factory=list)

    @property
    def total_delta_norm(self) -> float:
        return math.sqrt(sum(m.delta_norm**2 for m in self.modules))

    @property
    def total_base_norm(self) -> float:
        return math.sqrt(sum(m.base_norm**2 for m in self.modules))

    @property
    def total_relative(self) -> float:
        base = self.total_base_norm
        return self.total_delta_norm / base if base else 0.0

    @property
    def changed(self) -> list[ModuleChange]:
        return [m for m in self.modules if m.delta_norm > 0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "tuned": self.tuned,
            "total": {
                "relative_change": self.total_relative,
                "delta_norm": self.total_delta_norm,
                "base_norm": self.total_base_norm,
                "params": sum(m.params for m in self.modules),
                "changed_params": sum(m.params for m in self.changed),
            },
            "modules": [{**asdict(m), "relative_change": m.relative} for m in self.modules],
            "changed_modules": len(self.changed),
            "only_in_base": self.only_in_base,
            "only_in_tuned": self.only_in_tuned,
        }


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise RagtuneError(
            f"No safetensors weights in {folder}",
            "diff compares Hugging Face folders saved with safetensors (save_pretrained)",
        )
    return files


def _tensors(folder: Path, stack: ExitStack) -> dict[str, Any]:
    """Name -> an open safetensors handle holding it (tensors are read one at a time)."""
    from safetensors import safe_open

    where: dict[str, Any] = {}
    for f in _weight_files(folder):
        handle = stack.enter_context(safe_open(str(f), framework="pt"))
        for name in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            where[name] = handle
    return where


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def base_of_run(run_dir: Path) -> Path:
    """The base model a run was trained from, as recorded in its manifest."""
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise RagtuneError(
            f"{run_dir} has no manifest.json", "pass a run folder from ragtune tune, or --base"
        )
    return Path(manifest["base_model"]["path"])


def weight_diff(tuned: str | Path, base: str | Path | None = None) -> WeightDiff:
    """Compare ``tuned`` (a run folder or model folder) with ``base`` (default: the run's base)."""
    tuned_model = resolve_lm(tuned)  # "default", a model folder, or a run (its merged/)
    base_path = base_of_run(Path(tuned).expanduser()) if base is None else resolve_lm(base)
    with ExitStack() as stack:
        a = _tensors(base_path, stack)
        b = _tensors(tuned_model, stack)
        sums: dict[str, list[float]] = {}  # module -> [params, ||dW||^2, ||W||^2]
        for name in sorted(set(a) & set(b)):
            w0 = a[name].get_tensor(name).to(torch.float64)
            w1 = b[name].get_tensor(name).to(torch.float64)
            if w0.shape != w1.shape:
                raise RagtuneError(
                    f"{name} has shape {tuple(w0.shape)} in {base_path} but {tuple(w1.shape)} "
                    f"in {tuned_model}",
                    "diff compares a fine-tuned model with the base it was trained from",
                )
            s = sums.setdefault(_module(name), [0.0, 0.0, 0.0])
            s[0] += w0.numel()
            s[1] += float((w1 - w0).pow(2).sum())
            s[2] += float(w0.pow(2).sum())
    modules = [
        ModuleChange(m, int(p), math.sqrt(d2), math.sqrt(n2)) for m, (p, d2, n2) in sums.items()
    ]
    modules.sort(key=lambda m: (-m.relative, m.module))
    return WeightDiff(
        base=str(base_path),
        tuned=str(tuned_model),
        modules=modules,
        only_in_base=sorted(set(a) - set(b)),
        only_in_tuned=sorted(set(b) - set(a)),
    )
