"""Weight-only int8 (tiny model): the quantizer, the kernel, and the logits' tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ragtune.errors import RagtuneError
from ragtune.generate.engine import Generator, SamplingParams
from ragtune.generate.quant import INT8_KERNEL_MAX_ROWS, Linear, quantize_int8

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


def test_int8_logits_within_tolerance_of_fp32(tiny_lm: Path) -> None:
    """Stated tolerance: every logit within 5% of the largest |logit| of the fp32 model,
    and the same top token, for the prefill and for decode steps."""
    g32 = Generator.load(str(tiny_lm), device="cpu", dtype="float32", slots=1, max_seq_len=128)
    g8 = Generator.load(str(tiny_lm), device="cpu", dtype="float32", quantize="int8",
                        slots=1, max_seq_len=128)  # fmt: skip
    e8 = g8.scheduler.engine
    assert e8.w.head.w.dtype == torch.int8 and e8.w.layers[0].qkv.w.dtype == torch.int8
    assert e8.w.embed.dtype == torch.bfloat16  # the lookup stays exact (untied from the head)
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
