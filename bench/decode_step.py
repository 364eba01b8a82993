"""Milliseconds per decode step of ragtune's engine, and how much of it is not matmuls.

The before/after yardstick for the per-step work around the matmuls (norms, RoPE, cache
writes, attention, the argmax of the logits). For each precision (``--dtype`` x
``--quantize``, as ``Generator.load`` takes them; a combination whose compute dtype and
quantization were measured already, e.g. a quantized model that computes in bf16 whatever
the dtype, is skipped) and batch size ``--batch``, the default model is prefilled with a
``--context``-token RAG prompt (SciFact abstracts) in every row, then the engine decodes
greedy steps as the scheduler does (``logits(decode(tokens))``, the greedy pick,
``.tolist()``): the median of ``--steps`` steps after ``--warmup`` (and the fastest).

``matmul_ms`` is the same step's matmuls alone: every projection of every layer and the
output head called on inputs of the step's shape, timed right after each step (median);
``outside_ms`` is the median of (step - its matmuls), the time spent elsewhere, and
``outside_share`` that over ``step_ms``.
``scheduler_step_ms`` runs the whole scheduler (``--batch`` concurrent greedy requests
for a short question prompt through ``Generator.submit``, streamed, detokenizing
included): wall time over decode steps after every request's first token.
``scheduler_own_ms`` is the median time per step the scheduler thread spends outside the
engine's ``decode`` and ``logits`` calls (its batch building, greedy pick, detokenizing).

    PYTHONPATH=src python bench/decode_step.py --json --dtype float32,bfloat16 --quantize none,int8
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from generate import QUESTION_PROMPT, rag_prompt  # sibling script
from ragtune.generate.engine import Generator, SamplingParams
from ragtune.generate.gemma import Batch, GemmaEngine

try:
    from ragtune.generate.sampling import argmax_rows
except ImportError:  # a ragtune from before the blocked argmax: what its scheduler did
    argmax_rows = None


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The scheduler's greedy pick for (B, V) logits."""
    return logits.float().argmax(-1) if argmax_rows is None else argmax_rows(logits)


def matmul_pass(eng: GemmaEngine, B: int) -> Callable[[], None]:
    """One step's matmuls alone, on inputs of the step's shape: every layer's projections
    and the output head, called as a decode step calls them."""
    s, w = eng.spec, eng.w
    dtype = w.embed.dtype
    calls: list[tuple[Any, torch.Tensor]] = []
    for lw in w.layers:
        for lin, k in ((lw.qkv, s.hidden), (lw.o, s.n_heads * s.head_dim),
                       (lw.gate_up, s.hidden), (lw.down, s.inter)):  # fmt: skip
            calls.append((lin, torch.randn(B, k, dtype=dtype, device=w.device)))
    calls.append((w.head, torch.randn(B, s.hidden, dtype=dtype, device=w.device)))

    def run() -> None:
        for lin, x in calls:
            lin(x, False)

    return run


def engine_steps(
    eng: GemmaEngine, ids: list[int], B: int, warmup: int, steps: int
) -> tuple[list[float], list[float]]:
    """Seconds per greedy decode step of B rows after prefilling ``ids`` in each, and
    seconds of the step's matmuls alone, timed right after each step (interleaved, so
    that both see the same load on a shared machine)."""
    dev = eng.w.device
    context = len(ids)
    prompts = [torch.tensor(ids, device=dev)] * B
    slots = torch.arange(B, device=dev)
    matmuls = matmul_pass(eng, B)
    times: list[float] = []
    mm: list[float] = []
    with torch.inference_mode():
        h = eng.prefill_many(prompts, list(range(B)), [-1] * B)
        tok = greedy(eng.logits(h))
        for i in range(warmup + steps):
            pos = torch.full((B,), context + i, device=dev)
            t0 = time.perf_counter()
            chosen = greedy(eng.logits(eng.decode(tok, Batch(slots, pos, None, True)))).tolist()
            t1 = time.perf_counter()
            matmuls()
            times.append(t1 - t0)
            mm.append(time.perf_counter() - t1)
            tok = torch.tensor(chosen, device=dev)
    return times[warmup:], mm[warmup:]


def scheduler_steps(g: Generator, B: int, steps: int) -> tuple[float, float]:
    """B concurrent greedy requests through the scheduler: wall seconds per decode step
    (after every request's first token: prefills excluded), and the median seconds per
    step the scheduler spends outside the engine's ``decode`` and ``logits`` (building the
    batch, the greedy pick, detokenizing, streaming): from the end of one step's
    ``logits`` to the start of the next ``decode``."""
    sched = g.scheduler
    eng = sched.engine
    marks: list[tuple[str, float]] = []
    decode, logits = eng.decode, eng.logits

    def timed_decode(tokens: torch.Tensor, batch: Batch) -> torch.Tensor:
        marks.append(("decode", time.perf_counter()))
        return decode(tokens, batch)

    def timed_logits(h: torch.Tensor) -> torch.Tensor:
        out = logits(h)
        marks.append(("logits", time.perf_counter()))
        return out

    eng.decode, eng.logits = timed_decode, timed_logits  # type: ignore[method-assign]
    try:
        params = SamplingParams(max_tokens=steps + 1)
        hs = [g.submit(QUESTION_PROMPT, params) for _ in range(B)]
        its = [iter(h) for h in hs]
        for it in its:  # every request's first token (all prefilled)
            next(it)
        t0, s0 = time.perf_counter(), sched.steps
        for it in its:
            for _ in it:
                pass
        t1, s1 = time.perf_counter(), sched.steps
    finally:
        del eng.decode, eng.logits
    gaps = [
        b - a for (ka, a), (kb, b) in itertools.pairwise(marks) if (ka, kb) == ("logits", "decode")
    ]
    return (t1 - t0) / max(1, s1 - s0), statistics.median(gaps) if gaps else float("nan")


def measure(
    dtype: str, quantize: str, args: argparse.Namespace, seen: set[tuple[str, str]]
) -> dict[str, Any] | None:
    """The figures of one precision; None when ``seen`` has its compute dtype and
    quantization already (e.g. a quantized model computing in bf16 whatever the dtype)."""
    t0 = time.perf_counter()
    g = Generator.load(
        "default",
        device=args.device,
        dtype=dtype,
        quantize=quantize,  # type: ignore[arg-type]
        slots=max(args.batch),
        max_seq_len=args.context + args.warmup + args.steps + 64,
    )
    load_s = time.perf_counter() - t0
    eng = g.scheduler.engine
    compute = str(eng.w.embed.dtype).removeprefix("torch.")
    if (compute, quantize) in seen:
        g.close()
        return None
    seen.add((compute, quantize))
    out: dict[str, Any] = {
        "dtype": dtype,
        "quantize": quantize,
        "compute_dtype": compute,
        "load_s": round(load_s, 1),
    }
    # a RAG prompt (SciFact abstracts) cut to ``context`` tokens: real text, as served
    ids = g.tokenizer(rag_prompt(g.tokenizer, args.context + 32))["input_ids"][: args.context]
    for B in args.batch:
        steps, mms = engine_steps(eng, ids, B, args.warmup, args.steps)
        step, mm = statistics.median(steps), statistics.median(mms)
        outside = statistics.median(a - b for a, b in zip(steps, mms, strict=True))
        row = {
            "step_ms": round(step * 1e3, 2),
            "step_ms_min": round(min(steps) * 1e3, 2),
            "matmul_ms": round(mm * 1e3, 2),
            "outside_ms": round(outside * 1e3, 2),
            "outside_share": round(outside / step, 3),
            "tokens_per_s": round(B / step, 1),
        }
        if args.scheduler:
            step_s, gap_s = scheduler_steps(g, B, args.steps)
            row["scheduler_step_ms"] = round(step_s * 1e3, 2)
            row["scheduler_own_ms"] = round(gap_s * 1e3, 2)
        out[f"b{B}"] = row
    g.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dtype", default="float32,bfloat16", help="comma-separated")
    ap.add_argument("--quantize", default="none,int8", help="comma-separated")
    ap.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    ap.add_argument("--context", type=int, default=128, help="prompt tokens before decoding")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-scheduler", dest="scheduler", action="store_false")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    args.batch = [int(b) for b in args.batch.split(",")]
    torch.set_num_threads(os.cpu_count() or 1)
    load0 = os.getloadavg()
    results, seen = [], set()
    for q in args.quantize.split(","):
        for d in args.dtype.split(","):
            r = measure(d, q, args, seen)
            if r is not None:
                results.append(r)
            gc.collect()
    out = {
        "results": results,
        "context": args.context,
        "steps": args.steps,
        "warmup": args.warmup,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_avg_at_start": load0,
            "load_avg_at_end": os.getloadavg(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    parts = []
    for r in results:
        for B in args.batch:
            row = r[f"b{B}"]
            parts.append(
                f"{r['compute_dtype']}/{r['quantize']} B={B}: {row['step_ms']} ms "
                f"({row['outside_share']:.0%} outside matmuls)"
            )
    print("decode step: " + "; ".join(parts), file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
