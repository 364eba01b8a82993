"""int8 and int4 linear layers.

int8 weights: per-output-channel symmetric scales.

``W ≈ scale[:, None] * Wq`` with ``Wq = round(W / scale)`` in [-127, 127] and
``scale = max|W_row| / 127`` (the LLM.int8 / torchao ``Int8WeightOnlyConfig`` scheme,
without outliers). Decoding at small batch is bound by memory bandwidth, so reading a
quarter of fp32's bytes per weight is what makes it faster.

Where torch has fbgemm (x86-64 builds), :class:`Int8RowLinear` multiplies them by the
activations in integers with fbgemm's int8 GEMM: each activation row is coded in two
7-bit terms (:func:`split_activations`), so the activations keep about 13 bits and the
weights' rounding is the only real loss. fbgemm's kernel reads the weights much faster
than aten's weight-only one and its cost grows little from 1 to 10 rows, which is what a
verified speculative draft or a small batch needs (figures: bench/RESULTS.md).
Elsewhere :class:`Linear` is weight-only: PyTorch's ``aten._weight_int8pack_mm`` with bf16
activations for small batches, the dequantized dense matmul for large ones.

int4 (opt-in, ``quantize="int4"``): group-wise asymmetric min/max quantization, the
scheme of llama.cpp's Q4_1 and torchao's ``Int4WeightOnlyConfig``: each run of
``INT4_GROUP`` weights along the input dimension gets its own ``scale = (max - min) / 15``
and ``min``, ``code = round((w - min) / scale)`` in [0, 15], ``w ≈ code * scale + min``.
About 0.625 bytes a weight (4 bits plus a bf16 scale and offset per 32), half of int8's
bytes, read by PyTorch's ``aten._weight_int4pack_mm_for_cpu``; large batches unpack the
codes and use the dense matmul, as int8 does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# Rows up to this many use the int8 kernel; more dequantize and use the dense matmul
# (measured on a 2-core AVX512 CPU: the int8 kernel loses to bf16 from about 8-16 rows).
INT8_KERNEL_MAX_ROWS = 32
INT4_KERNEL_MAX_ROWS = 32
# weights per int4 group (along the input dimension); the packed layout's block of rows
INT4_GROUP = 32
INT4_BLOCK_N = 64


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float weight -> (N, K) int8 and (N,) fp32 scales, per output channel."""
    w32 = w.float()
    scale = w32.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (N,)
    q = torch.round(w32 / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(
    w: torch.Tensor, group: int = INT4_GROUP
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) float weight -> (N, K) uint8 codes in [0, 15], and (N, K / group) fp32 scales
    and minimums, so that ``w ≈ code * scale + min`` within each group."""
    n, k = w.shape
    if k % group:
        raise ValueError(f"int4: input size {k} is not a multiple of the group size {group}")
    wg = w.float().view(n, k // group, group)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)
    codes = torch.round((wg - lo[..., None]) / scale[..., None]).clamp_(0, 15)
    return codes.to(torch.uint8).view(n, k), scale, lo


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes -> the layout ``_weight_int4pack_mm_for_cpu`` reads, (N, K / 2) uint8;
    N must be a multiple of ``INT4_BLOCK_N``."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int4` (torch 2.13's CPU layout: rows in blocks of 64;
    within a block, byte ``k * 32 + j`` holds row ``j``'s code for column ``k`` in its low
    nibble and row ``j + 32``'s in its high nibble). -> (N, K) uint8 codes."""
    n, k = packed.shape[0], packed.shape[1] * 2
    half = INT4_BLOCK_N // 2
    blocks = packed.reshape(n // INT4_BLOCK_N, k, half)
    both = torch.cat([blocks & 15, blocks >> 4], dim=2)  # (N / 64, K, 64)
    return both.transpose(1, 2).reshape(n, k)


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

    def __call__(self, x: torch.Tensor, dense: bool | None = None) -> torch.Tensor:
        """``dense``: True = dequantize and use the dense matmul, False = the quantized
        kernel, None = by the number of rows. A forward that must give each row the same
        result whatever else is in the batch fixes it (the two round differently)."""
        if self.scale is None:
            return F.linear(x, self.w)
        rows = x.numel() // x.shape[-1]
        if dense is None:
            dense = rows > INT8_KERNEL_MAX_ROWS
        if dense or x.device.type != "cpu":
            return F.linear(x, self.dense())
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(rows, -1), self.w, self.scale)
        return y.view(*x.shape[:-1], self.w.shape[0])


# The int8 x int8 path's activations: each row is scaled to [-ACT_LEVELS, ACT_LEVELS] and
# coded in 7 bits (fbgemm takes unsigned activations: code = round(v) + ACT_ZERO, in
# [1, 127]). 7 bits, as fbgemm's own ``reduce_range``, so that the u8 x s8 pair sums of
# CPUs without VNNI cannot saturate their 16-bit accumulators.
ACT_LEVELS = 63
ACT_ZERO = 64


def int8_gemm_available() -> bool:
    """Whether this torch has fbgemm's x86 int8 GEMM (x86-64 builds do)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


def split_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) fp32 -> (2M, K) values for a 7-bit code with scale 1, and the (M, 1) code
    steps ``step_i = max|x_i| / ACT_LEVELS``: row ``i`` is ``x_i / step_i`` rounded (the
    codes themselves), row ``M + i`` its rounding error times ``2 * ACT_LEVELS`` (the error
    is at most half a step, so this fills the code's range again). Then
    ``x_i ≈ (code_i + code_{M+i} / (2 * ACT_LEVELS)) * step_i`` to about 13 bits instead
    of 7, and the weights' int8 rounding dominates the error, as in weight-only int8.

    Written in as few torch calls as it takes (each costs microseconds of dispatch, and a
    decode step makes 73 of these): the codes go straight into one buffer."""
    rows, k = x.shape
    # abs + amax: vector_norm(inf) is the same value but its reduction is 3-10x slower
    step = x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-30).div_(ACT_LEVELS)
    parts = x.new_empty(2 * rows, k)
    hi, lo = parts[:rows], parts[rows:]
    torch.div(x, step, out=lo)  # x / step, in [-ACT_LEVELS, ACT_LEVELS]
    torch.round(lo, out=hi)
    lo.sub_(hi).mul_(2 * ACT_LEVELS)
    return parts, step


def int8_gemm(parts: torch.Tensor, packed: Any) -> torch.Tensor:
    """fbgemm's int8 GEMM of integer-valued fp32 ``parts`` (coded with scale 1 and zero
    point :data:`ACT_ZERO`) by a prepacked int8 weight -> fp32 ``parts @ W.T``.

    torch.ops' Python entry asks every argument for ``__torch_function__``; asking the
    packed weight (a TorchScript object) raises and catches a C++ exception, 10-30 µs a
    call. Nothing here is a tensor subclass, so that lookup is switched off."""
    with torch._C.DisableTorchFunctionSubclass():
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            parts, 1.0, ACT_ZERO, packed
        )


@dataclass
class Int8RowLinear(Linear):
    """``y = x @ W.T`` with int8 weights per output channel (as :class:`Linear`) and
    activations coded per row in two 7-bit terms (:func:`split_activations`), multiplied
    in integer arithmetic by fbgemm's x86 int8 GEMM
    (``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``), the outputs scaled back
    per row (exact: the product is linear in each row). Per-row activation scales are the
    per-token dynamic quantization of LLM.int8() (Dettmers et al. 2022); the second term
    replaces its outlier handling. Integer products are exact, so a row's result does not
    depend on the other rows of the batch; prefill and decode use the same kernel."""

    packed: Any = None  # fbgemm's prepacked weight (int8 codes and fp32 scales)
    n: int = 0
    k: int = 0

    @classmethod
    def make(cls, w: torch.Tensor, int8: bool = True) -> Int8RowLinear:
        n, k = w.shape
        q, scale = quantize_int8(w)
        with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated
            warnings.simplefilter("ignore", UserWarning)
            qt = torch._make_per_channel_quantized_tensor(
                q, scale.double(), torch.zeros(n, dtype=torch.long), 0
            )
            packed = torch.ops.quantized.linear_prepack(qt, None)
        return cls(torch.empty(0, dtype=torch.int8), scale, packed=packed, n=n, k=k)

    @property
    def out_features(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        return self.n * self.k + 4 * self.n

    def dense(self) -> torch.Tensor:
        w, _ = torch.ops.quantized.linear_unpack(self.packed)
        return w.dequantize()

    def __call__(self, x: torch.Tensor, dense: bool | None = None) -> torch.Tensor:
        """``dense`` is ignored: one kernel for every batch size (see the class)."""
        rows = x.numel() // self.k
        x2 = x.reshape(rows, self.k) if x.dim() != 2 else x
        if x2.dtype != torch.float32:
            x2 = x2.float()
        parts, step = split_activations(x2)
        y = int8_gemm(parts, self.packed)
        # (code + code_lo / (2 * ACT_LEVELS)) * step, row by row, in y's first rows
        out = y[:rows].mul_(step).addcmul_(y[rows:], step.div_(2 * ACT_LEVELS))
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], self.n)


@dataclass
class Int4Linear(Linear):
    """``y = x @ W.T`` for a group-wise int4 weight: ``w`` is the packed (N', K / 2) uint8
    codes (N' = N rounded up to a whole block of rows; the extra rows are zero and cut
    from the output), ``scale`` the kernel's (K / group, N', 2) scales and offsets (the
    offset is ``min + 8 * scale``: the kernel computes ``(code - 8) * scale + offset``)."""

    n: int = 0  # output features before padding
    group: int = INT4_GROUP

    @classmethod
    def make(cls, w: torch.Tensor, int8: bool = False) -> Int4Linear:
        n, k = w.shape
        pad = -n % INT4_BLOCK_N
        if pad:
            w = torch.cat([w, w.new_zeros(pad, k)])
        codes, scale, lo = quantize_int4(w)
        sz = torch.stack([scale, lo + 8 * scale], -1).transpose(0, 1).contiguous()
        return cls(pack_int4(codes), sz.to(w.dtype), n=n)

    @property
    def out_features(self) -> int:
        return self.n

    @property
    def nbytes(self) -> int:
        assert self.scale is not None
        return self.w.numel() + self.scale.numel() * self.scale.element_size()

    def dense(self) -> torch.Tensor:
        assert self.scale is not None
        codes = unpack_int4(self.w)  # (N', K)
        n, k = codes.shape
        scale, offset = self.scale[..., 0].t(), self.scale[..., 1].t()  # (N', K / group)
        g = codes.view(n, k // self.group, self.group).to(self.scale.dtype) - 8
        return g.mul_(scale[..., None]).add_(offset[..., None]).view(n, k)[: self.n]

    def __call__(self, x: torch.Tensor, dense: bool | None = None) -> torch.Tensor:
        assert self.scale is not None
        rows = x.numel() // x.shape[-1]
        if dense is None:
            dense = rows > INT4_KERNEL_MAX_ROWS
        if dense or x.device.type != "cpu":
            return F.linear(x, self.dense())
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(rows, -1), self.w, self.group, self.scale
        )
        if y.shape[1] != self.n:
            y = y[:, : self.n]
        return y.reshape(*x.shape[:-1], self.n)
