"""Weight-only int8 linear layers (per-output-channel symmetric scales).

``W ≈ scale[:, None] * Wq`` with ``Wq = round(W / scale)`` in [-127, 127] and
``scale = max|W_row| / 127`` (the LLM.int8 / torchao ``Int8WeightOnlyConfig`` scheme,
without outliers). Decoding at small batch is bound by memory bandwidth, so reading a
quarter of fp32's bytes per weight is what makes it faster; activations stay bf16.
Small batches use PyTorch's own kernel ``aten._weight_int8pack_mm``; large ones (a
prompt's prefill) dequantize the layer on the fly and use the dense bf16 matmul, which is
faster there because it is compute-bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Rows up to this many use the int8 kernel; more dequantize and use the dense matmul
# (measured on a 2-core AVX512 CPU: the int8 kernel loses to bf16 from about 8-16 rows).
INT8_KERNEL_MAX_ROWS = 32


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float weight -> (N, K) int8 and (N,) fp32 scales, per output channel."""
    w32 = w.float()
    scale = w32.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (N,)
    q = torch.round(w32 / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


@dataclass
class Linear:
    """``y = x @ W.T`` for a dense weight or an int8 weight with per-row scales."""

    w: torch.Tensor  # (N, K) dense, or int8
    scale: torch.Tensor | None = None  # (N,) in the activation dtype when int8

    @classmethod
    def make(cls, w: torch.Tensor, int8: bool) -> Linear:
        if not int8:
            return cls(w.contiguous())
        q, scale = quantize_int8(w)
        return cls(q, scale.to(w.dtype))

    @property
    def out_features(self) -> int:
        return int(self.w.shape[0])

    @property
    def nbytes(self) -> int:
        extra = 0 if self.scale is None else self.scale.numel() * self.scale.element_size()
        return self.w.numel() * self.w.element_size() + extra

    def dense(self) -> torch.Tensor:
        """The weight as a float matrix (dequantized when int8)."""
        if self.scale is None:
            return self.w
        return self.w.to(self.scale.dtype) * self.scale[:, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            return F.linear(x, self.w)
        rows = x.numel() // x.shape[-1]
        if rows > INT8_KERNEL_MAX_ROWS or x.device.type != "cpu":
            return F.linear(x, self.dense())
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(rows, -1), self.w, self.scale)
        return y.view(*x.shape[:-1], self.w.shape[0])
