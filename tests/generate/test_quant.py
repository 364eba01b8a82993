"""int8 and int4 (tiny model): the quantizers, the kernels, and the logits' tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ragtune.errors import RagtuneError
from ragtune.generate.engine import Generator, SamplingParams
from ragtune.generate.quant import (
    ACT_LEVELS,
    INT4_KERNEL_MAX_ROWS,
    INT8_KERNEL_MAX_ROWS,
    Int4Linear,
    Int8RowLinear,
    Linear,
    int8_gemm_available,
    pack_int4,
    quantize_int4,
    quantize_int8,
    split_activations,
    unpack_int4,
)

needs_gemm = pytest.mark.skipif(not int8_gemm_available(), reason="no fbgemm in this torch")

PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "The quick brown fox jumps over the lazy dog. A second",
]


def test_quantize_int8_is_per_channel_symmetric() -> None:
    w = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, -2.0]])
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8
    assert q.tolist() == [[127, -64, 32], [0, 0, -127]]  # -63.5 rounds to even (-64)
    torch.testing.assert_close(scale, torch.tensor([1 / 127, 2 / 127]))
    assert (q.float() * scale[:, None] - w).abs().max() <= scale.max() / 2


def test_int8_kernel_equals_the_dequantized_matmul() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g).bfloat16()
    lin = Linear.make(w, int8=True)
    assert lin.w.dtype == torch.int8 and lin.nbytes < w.numel() * 2
    for rows in (1, 3, INT8_KERNEL_MAX_ROWS, INT8_KERNEL_MAX_ROWS + 5):  # kernel and dense
        x = torch.randn(rows, 64, generator=g).bfloat16()
        ref = x.float() @ lin.dense().float().t()
        torch.testing.assert_close(lin(x).float(), ref, atol=0.06, rtol=0.02)


def test_split_activations_recovers_each_row_to_13_bits() -> None:
    """The two 7-bit terms, each rounded as the kernel codes them, give every row back to
    within a 1 / (4 * 63 * 63) share of its largest |value| (plus float rounding)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, generator=g) * torch.tensor([1.0, 1e-3, 50.0, 1.0, 1.0])[:, None]
    x[3, 7] = 300.0  # an outlier row
    x[4] = 0.0  # an all-zero row stays zero (no division by zero)
    parts, step = split_activations(x.clone())
    assert parts.shape == (10, 64) and step.shape == (5, 1)
    assert parts.abs().max() <= ACT_LEVELS + 1e-4  # both terms fit the 7-bit code
    assert torch.equal(parts[:5], parts[:5].round())  # the first term is the codes
    coded = torch.round(parts)  # what the kernel multiplies
    back = (coded[:5] + coded[5:] / (2 * ACT_LEVELS)) * step
    big = x.abs().amax(-1, keepdim=True)
    assert ((back - x).abs() <= big / (4 * ACT_LEVELS**2) + 1e-6 * big).all()
    assert torch.equal(back[4], torch.zeros(64))


@needs_gemm
def test_int8_gemm_equals_the_dequantized_matmul_row_by_row() -> None:
    """The int8 GEMM path computes x @ dequant(W).T to the activations' 13 bits, and each
    row's result is bit-identical whatever else is in the batch (integer products)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g)
    lin = Int8RowLinear.make(w)
    assert lin.out_features == 96 and lin.nbytes == 96 * 64 + 4 * 96
    q, scale = quantize_int8(w)
    deq = q.float() * scale[:, None]
    torch.testing.assert_close(lin.dense(), deq)
    x = torch.randn(40, 64, generator=g)
    x[5, 3] = 80.0  # an outlier
    y = lin(x)
    ref = x @ deq.t()
    assert y.shape == (40, 96)
    assert ((y - ref).norm() / ref.norm()).item() < 2e-3
    alone = torch.cat([lin(x[i : i + 1]) for i in range(40)])
    assert torch.equal(y, alone)
    assert torch.equal(lin(x[None]).view(40, 96), y)  # any leading shape
    assert lin(x.bfloat16()).dtype == torch.bfloat16


def test_int8_logits_within_tolerance_of_fp32(tiny_lm: Path) -> None:
    """Stated tolerance: every logit within 5% of the largest |logit| of the fp32 model,
    and the same top token, for the prefill and for decode steps."""
    g32 = Generator.load(str(tiny_lm), device="cpu", dtype="float32", slots=1, max_seq_len=128)
    g8 = Generator.load(str(tiny_lm), device="cpu", dtype="float32", quantize="int8",
                        slots=1, max_seq_len=128)  # fmt: skip
    e8 = g8.scheduler.engine
    kind = Int8RowLinear if int8_gemm_available() else Linear
    assert type(e8.w.head) is kind and type(e8.w.layers[0].qkv) is kind
    assert e8.w.head.w.dtype == torch.int8 and e8.w.layers[0].qkv.w.dtype == torch.int8
    # the lookup stays exact (untied from the head); the GEMM keeps the model's dtype
    assert e8.w.embed.dtype == (torch.float32 if kind is Int8RowLinear else torch.bfloat16)
    for prompt in PROMPTS:
        ids = torch.tensor(g32.tokenizer(prompt)["input_ids"])
        with torch.inference_mode():
            ref = [g.scheduler.engine for g in (g32, g8)]
            a, b = (e.logits(e.prefill(ids, 0, -1)).float()[0] for e in ref)
        assert (a - b).abs().max() <= 0.05 * a.abs().max()
        assert a.argmax() == b.argmax()
    out32 = g32.generate(PROMPTS, max_new_tokens=6, stop=())
    out8 = g8.generate(PROMPTS, max_new_tokens=6, stop=())
    assert [o.new_tokens for o in out8] == [6, 6]
    assert out8[0].text[:1] == out32[0].text[:1]
    h = g8.submit(PROMPTS[0], SamplingParams(max_tokens=3))
    assert h.result().completion_tokens == 3
    g32.close()
    g8.close()


@needs_gemm
def test_int8_gemm_batched_equals_alone_and_cached_equals_full(tiny_lm: Path) -> None:
    """With the int8 GEMM in fp32, a request's greedy tokens do not depend on what it is
    batched with, and the KV-cached decode's logits equal a full forward of the prompt
    plus the generated tokens (to fp32 attention rounding)."""
    g8 = Generator.load(str(tiny_lm), device="cpu", dtype="float32", quantize="int8",
                        slots=2, max_seq_len=128)  # fmt: skip
    out = g8.generate(PROMPTS, max_new_tokens=8, stop=())
    alone = [g8.generate([p], max_new_tokens=8, stop=())[0].text for p in PROMPTS]
    assert [o.text for o in out] == alone
    e8 = g8.scheduler.engine
    from ragtune.generate.gemma import Batch

    ids = torch.tensor(g8.tokenizer(PROMPTS[0])["input_ids"])
    with torch.inference_mode():
        last = e8.logits(e8.prefill(ids, 0, -1))[0]
        nxt = last.argmax()
        pos = torch.tensor([ids.shape[0]])
        h = e8.decode(nxt[None], Batch(torch.tensor([0]), pos, None, True))
        cached = e8.logits(h)[0]
        full = e8.logits(e8.prefill(torch.cat([ids, nxt[None]]), 1, -1))[0]
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
    g8.close()


def test_int8_without_the_gemm_falls_back_to_weight_only(
    tiny_lm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where torch has no fbgemm (non-x86 builds), int8 is weight-only with bf16
    activations (aten._weight_int8pack_mm)."""
    import ragtune.generate.quant as quant

    monkeypatch.setattr(quant, "int8_gemm_available", lambda: False)
    g8 = Generator.load(str(tiny_lm), device="cpu", dtype="float32", quantize="int8",
                        slots=1, max_seq_len=128)  # fmt: skip
    e8 = g8.scheduler.engine
    assert type(e8.w.head) is Linear and e8.w.head.w.dtype == torch.int8
    assert e8.w.embed.dtype == torch.bfloat16
    assert g8.generate(PROMPTS[:1], max_new_tokens=4, stop=())[0].new_tokens == 4
    g8.close()


def test_int8_needs_a_gemma_model_on_cpu(tiny_lm: Path) -> None:
    with pytest.raises(RagtuneError, match="int8 weights are for the CPU"):
        Generator.load(str(tiny_lm), device="meta", quantize="int8")


def test_ask_with_int8(tiny_lm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from ragtune.cli import main

    args = ["ask", "What is the capital of France?", "--model", str(tiny_lm), "--device", "cpu"]
    assert main([*args, "--int8", "--json", "--max-new-tokens", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["timings"]["generate_s"] > 0 and isinstance(out["answer"], str)


def test_quantize_int4_is_groupwise_min_max() -> None:
    w = torch.cat([torch.linspace(-1.0, 2.0, 32), torch.linspace(0.0, 0.15, 32)])[None]
    codes, scale, lo = quantize_int4(w, group=32)
    assert codes.dtype == torch.uint8 and codes.shape == (1, 64)
    torch.testing.assert_close(scale, torch.tensor([[3.0 / 15, 0.15 / 15]]))
    torch.testing.assert_close(lo, torch.tensor([[-1.0, 0.0]]))
    assert codes[0, 0] == 0 and codes[0, 31] == 15 and codes[0, 32] == 0 and codes[0, 63] == 15
    deq = (codes.float().view(1, 2, 32) * scale[..., None] + lo[..., None]).view(1, 64)
    assert (deq - w).abs().max() <= scale.max() / 2 + 1e-6
    with pytest.raises(ValueError, match="multiple of the group size"):
        quantize_int4(torch.ones(2, 48), group=32)


def test_int4_pack_round_trips() -> None:
    """unpack_int4 reads torch's packed layout back exactly (it breaks loudly if a torch
    version changes the layout)."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (192, 96), generator=g).to(torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (192, 48) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), codes)


@pytest.mark.parametrize("n", [128, 100])  # 100: rows padded to a block of 64, then cut
def test_int4_kernel_equals_the_dequantized_matmul(n: int) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, 64, generator=g).bfloat16()
    lin = Int4Linear.make(w)
    assert lin.out_features == n and lin.nbytes < w.numel()  # under 1 byte a weight
    dense = lin.dense()
    assert dense.shape == (n, 64)
    codes, scale, lo = quantize_int4(w)
    ref_w = (codes.float().view(n, 2, 32) * scale[..., None] + lo[..., None]).view(n, 64)
    torch.testing.assert_close(dense.float(), ref_w, atol=0.02, rtol=0.01)  # bf16 rounding
    for rows in (1, 3, INT4_KERNEL_MAX_ROWS, INT4_KERNEL_MAX_ROWS + 5):  # kernel and dense
        x = torch.randn(rows, 64, generator=g).bfloat16()
        ref = x.float() @ dense.float().t()
        y = lin(x)
        assert y.shape == (rows, n)
        torch.testing.assert_close(y.float(), ref, atol=0.1, rtol=0.02)


def test_int4_engine_equals_the_dequantized_model(tiny_lm: Path) -> None:
    """The int4 engine computes the model whose weights are the dequantized int4 ones:
    its logits equal a bf16 engine's on those weights (to bf16 accumulation order), for
    the prefill and decode; batched equals alone. (How far int4 is from full precision on
    the real model is bench/int8_quality.py's to measure, not a random tiny model's.)"""
    import torch.nn as nn

    from ragtune.models import load_lm

    g4 = Generator.load(str(tiny_lm), device="cpu", dtype="float32", quantize="int4",
                        slots=2, max_seq_len=128)  # fmt: skip
    e4 = g4.scheduler.engine
    assert isinstance(e4.w.head, Int4Linear) and isinstance(e4.w.layers[0].qkv, Int4Linear)
    assert e4.w.embed.dtype == torch.bfloat16  # the lookup stays exact (untied from the head)
    model, tok = load_lm(str(tiny_lm), device="cpu", dtype="float32")
    with torch.no_grad():  # int4 groups run along each row: fusing q/k/v changes nothing
        for m in model.modules():
            if isinstance(m, nn.Linear):
                deq = Int4Linear.make(m.weight.detach().bfloat16()).dense().float()
                m.weight = nn.Parameter(deq)  # lm_head gets its own copy: untied
    gd = Generator(model, tok, dtype=torch.bfloat16, slots=1, max_seq_len=128)
    for prompt in PROMPTS:
        ids = torch.tensor(tok(prompt)["input_ids"])
        with torch.inference_mode():
            a, b = (e.logits(e.prefill(ids, 0, -1)).float()[0] for e in (gd.scheduler.engine, e4))
        assert (a - b).abs().max() <= 0.03 * a.abs().max()
    out4 = g4.generate(PROMPTS, max_new_tokens=6, stop=())
    assert [o.new_tokens for o in out4] == [6, 6]
    alone = [g4.generate([p], max_new_tokens=6, stop=())[0].text for p in PROMPTS]
    assert [o.text for o in out4] == alone
    g4.close()
    gd.close()


def test_ask_with_int4(tiny_lm: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from ragtune.cli import main

    args = ["ask", "What is the capital of France?", "--model", str(tiny_lm), "--device", "cpu"]
    assert main([*args, "--int4", "--json", "--max-new-tokens", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out["answer"], str)
