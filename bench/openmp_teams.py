"""Decode speed through the scheduler with and without releasing idle OpenMP teams.

ragtune's engine decodes in the scheduler's thread; the thread that loaded the model (and
any other that ran a parallel kernel) keeps its own GNU OpenMP team, and with more
OpenMP threads than CPUs libgomp stops spin-waiting between kernels
(``ragtune.generate.threads``). This runs the same requests in fresh processes, with the
release on (what ragtune does) and off (``release_idle_openmp_threads`` replaced by a
no-op in that process), alternating, and prints single-stream decode tokens/s (after the
first token) and 16-request tokens/s for each precision.

    PYTHONPATH=src python bench/openmp_teams.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any


def child(quantize: str, release: bool, tokens: int) -> dict[str, float]:
    """One measurement in this process (the parent runs it in a fresh one)."""
    from pathlib import Path

    import ragtune.generate.scheduler as scheduler
    from generate import QUESTION_PROMPT, rt_concurrent, rt_stream  # sibling script
    from ragtune.generate.engine import Generator

    print(f"ragtune from {Path(scheduler.__file__).parent}", file=sys.stderr)
    if not release:
        scheduler.release_idle_openmp_threads = lambda: False  # type: ignore[assignment]
    g = Generator.load("default", device="cpu", dtype="auto", quantize=quantize)  # type: ignore[arg-type]
    rt_stream(g, QUESTION_PROMPT, 4)  # warm-up
    single = statistics.median(rt_stream(g, QUESTION_PROMPT, tokens)["rate"] for _ in range(2))
    prompts = [f"{QUESTION_PROMPT} ({i})" for i in range(16)]
    batch = rt_concurrent(g, prompts, tokens, [None] * 16)
    g.close()
    return {"single_stream_tokens_per_s": single, "batched16_tokens_per_s": batch}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--precisions", default="none,int8", help="quantize settings to run")
    ap.add_argument("--child", nargs=2, metavar=("QUANTIZE", "RELEASE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        quantize, release = args.child
        print(json.dumps(child(quantize, release == "1", args.tokens)))
        return 0
    runs: dict[str, list[dict[str, float]]] = {}
    for rnd in range(args.rounds):
        print(f"round {rnd + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for quantize in args.precisions.split(","):
            for release in ("1", "0"):
                cmd = [sys.executable, __file__, "--tokens", str(args.tokens)]
                out = subprocess.run(
                    [*cmd, "--child", quantize, release],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                key = f"{quantize}_{'release' if release == '1' else 'keep'}"
                runs.setdefault(key, []).append(json.loads(out.stdout.splitlines()[-1]))
    result: dict[str, Any] = {}
    for key, rs in runs.items():
        for metric in rs[0]:
            result[f"{key}_{metric}"] = statistics.median(r[metric] for r in rs)
    for quantize in args.precisions.split(","):
        for metric in ("single_stream_tokens_per_s", "batched16_tokens_per_s"):
            on, off = result[f"{quantize}_release_{metric}"], result[f"{quantize}_keep_{metric}"]
            result[f"{quantize}_{metric}_speedup"] = on / off
    result.update(
        raw=runs,
        rounds=args.rounds,
        new_tokens=args.tokens,
        cpus=os.cpu_count(),
        load_avg_at_end=os.getloadavg(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            "; ".join(
                f"{q}: single {result[f'{q}_keep_single_stream_tokens_per_s']:.1f} -> "
                f"{result[f'{q}_release_single_stream_tokens_per_s']:.1f} tok/s, 16 requests "
                f"{result[f'{q}_keep_batched16_tokens_per_s']:.1f} -> "
                f"{result[f'{q}_release_batched16_tokens_per_s']:.1f} tok/s"
                for q in args.precisions.split(",")
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
