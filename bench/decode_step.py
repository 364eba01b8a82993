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
output head called on inputs of the step's shape, timed together (median of repeats).
``outside_share`` = 1 - matmul_ms / step_ms estimates the share spent elsewhere.
``scheduler_step_ms`` runs the whole scheduler (a stream of ``--batch`` concurrent greedy
requests through ``Generator.submit``, detokenizing included): wall time over decode steps
after every request's first token; it minus ``step_ms`` is the scheduler's own cost.

    PYTHONPATH=src python bench/decode_step.py --json --dtype float32,bfloat16 --quantize none,int8
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
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


def engine_steps(eng: GemmaEngine, ids: list[int], B: int, warmup: int, steps: int) -> list[float]:
    """Seconds per greedy decode step of B rows after prefilling ``ids`` in each."""
    dev = eng.w.device
    context = len(ids)
    prompts = [torch.tensor(ids, device=dev)] * B
    slots = torch.arange(B, device=dev)
    times: list[float] = []
    with torch.inference_mode():
        h = eng.prefill_many(prompts, list(range(B)), [-1] * B)
        tok = greedy(eng.logits(h))
        for i in range(warmup + steps):
            pos = torch.full((B,), context + i, device=dev)
            t0 = time.perf_counter()
            chosen = greedy(eng.logits(eng.decode(tok, Batch(slots, pos, None, True)))).tolist()
            times.append(time.perf_counter() - t0)
            tok = torch.tensor(chosen, device=dev)
    return times[warmup:]


def matmul_seconds(eng: GemmaEngine, B: int, repeats: int) -> float:
    """Median seconds of one step's matmuls alone (every layer's projections, the head)."""
    s, w = eng.spec, eng.w
    dtype = w.embed.dtype
    calls: list[tuple[Any, torch.Tensor]] = []
    for lw in w.layers:
        for lin, k in ((lw.qkv, s.hidden), (lw.o, s.n_heads * s.head_dim),
                       (lw.gate_up, s.hidden), (lw.down, s.inter)):  # fmt: skip
            calls.append((lin, torch.randn(B, k, dtype=dtype, device=w.device)))
    calls.append((w.head, torch.randn(B, s.hidden, dtype=dtype, device=w.device)))
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            for lin, x in calls:
                lin(x, False)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scheduler_step_seconds(g: Generator, B: int, steps: int) -> float:
    """Wall seconds per scheduler step for B concurrent greedy requests (after the first
    token of every one: prefills excluded)."""
    sched = g.scheduler
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
    return (t1 - t0) / max(1, s1 - s0)


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
        steps = engine_steps(eng, ids, B, args.warmup, args.steps)
        step = statistics.median(steps)
        mm = matmul_seconds(eng, B, args.matmul_repeats)
        row = {
            "step_ms": round(step * 1e3, 2),
            "step_ms_min": round(min(steps) * 1e3, 2),
            "matmul_ms": round(mm * 1e3, 2),
            "outside_ms": round((step - mm) * 1e3, 2),
            "outside_share": round(1 - mm / step, 3),
            "tokens_per_s": round(B / step, 1),
        }
        if args.scheduler:
            row["scheduler_step_ms"] = round(scheduler_step_seconds(g, B, args.steps) * 1e3, 2)
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
    ap.add_argument("--matmul-repeats", type=int, default=10)
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
