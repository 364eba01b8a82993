"""Peak memory per rank of ``ragtune tune`` in one process, under DDP and under FSDP.

Each arm trains the same model on the same data for a few steps through ragtune's own
recipe (``ragtune.tune.loop.train``): in one process, or under ``torchrun --standalone
--nproc-per-node N`` with ``parallel="ddp"`` or ``"fsdp"``. Every rank reports its peak
memory: the RSS high-water mark (``ru_maxrss``) on CPU, ``torch.cuda.max_memory_allocated``
on GPU. Under FSDP each rank keeps 1/N of the parameters, gradients and Adam moments, so
its peak should fall well below the one-process figure; under DDP every rank holds all of
them (plus its gradient buckets). Prints one JSON object and a one-line summary.

    python bench/tune_parallel.py                       # Gemma 3 270M, 3 steps of 8 x ~64 tokens
    python bench/tune_parallel.py --arms full-1,full-fsdp2 --model /path/to/hf-folder

Note: every rank first loads the whole model and then shards it, so the CPU high-water mark
includes one full copy of the weights whatever the number of ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune import chat_examples, fit_to_length  # a sibling bench script

# arm -> (method, parallel, processes)
ARMS = {
    "full-1": ("full", "ddp", 1),
    "full-ddp2": ("full", "ddp", 2),
    "full-fsdp2": ("full", "fsdp", 2),
    "lora-1": ("lora", "ddp", 1),
    "lora-fsdp2": ("lora", "fsdp", 2),
}


def run_worker(spec: dict[str, Any]) -> None:
    """One rank of one arm: train, then write this rank's peak memory to ``work/rank-R.json``."""
    import torch

    from ragtune.tune.loop import train

    method, parallel, _ = ARMS[spec["arm"]]
    t0 = time.perf_counter()
    result = train(
        spec["data"],
        Path(spec["work"]) / "run",
        method=method,
        base=spec["model"],
        epochs=1,
        batch_size=spec["batch_size"],
        lr_multiplier=spec["lr_multiplier"],
        seed=spec["seed"],
        lora_dropout=0.0,
        max_length=spec["seq_len"],
        micro_batch_tokens=spec["batch_size"] * spec["seq_len"],
        max_steps=spec["steps"],
        dtype="float32",
        parallel=parallel,
    )
    if torch.cuda.is_available():
        peak, kind = torch.cuda.max_memory_allocated(), "cuda"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss"
    rank = int(os.environ.get("RANK", "0"))
    out = {
        "rank": rank,
        "peak_memory_bytes": peak,
        "memory_kind": kind,
        "wall_s": time.perf_counter() - t0,
        "train_loss": result.train_loss,
        "steps": result.steps,
    }
    (Path(spec["work"]) / f"rank-{rank}.json").write_text(json.dumps(out))


def state_bytes(spec: dict[str, Any]) -> None:
    """One rank: shard the model as ``ragtune tune --parallel fsdp`` does (or not, in one
    process), take one AdamW step on a short sequence, and write the bytes this rank holds
    in parameters, gradients and optimizer state (a DTensor counts its local shard)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from ragtune.models import resolve_lm
    from ragtune.tune.loss import LabelledLoss
    from ragtune.tune.parts import load_model
    from ragtune.tune.sharding import shard

    method, _, nproc = ARMS[spec["arm"]]
    model = load_model(resolve_lm(spec["model"]), method, 16, 32, 0.0, spec["seed"])
    loss_module = LabelledLoss(model)
    if nproc > 1:
        dist.init_process_group("gloo")
        shard(loss_module, model, torch.device("cpu"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    ids = torch.arange(10, 42)[None]  # (1, 32)
    loss_module(ids, torch.ones_like(ids), ids)[0].backward()
    optimizer.step()

    def nbytes(tensors: Any) -> int:
        local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
        return sum(t.numel() * t.element_size() for t in local)

    moments = [v for s in optimizer.state.values() for v in s.values() if v.dim() > 0]
    out = {
        "rank": int(os.environ.get("RANK", "0")),
        "parameter_bytes": nbytes(model.parameters()),
        "gradient_bytes": nbytes(p.grad for p in trainable if p.grad is not None),
        "optimizer_state_bytes": nbytes(moments),
    }
    (Path(spec["work"]) / f"state-{out['rank']}.json").write_text(json.dumps(out))
    if nproc > 1:
        dist.destroy_process_group()


def prepare(args: argparse.Namespace, work: Path) -> Path:
    from transformers import AutoTokenizer

    from ragtune.models import resolve_lm

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_lm(args.model)))
    rows = fit_to_length(chat_examples(args.batch_size * args.steps), tokenizer, args.seq_len)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def launch(folder: Path, nproc: int, mode: str, spec: dict[str, Any], kind: str) -> list[Any]:
    """Run this script in ``mode`` on ``nproc`` processes (torchrun when more than one), each
    with its share of the cores; the JSON each rank wrote to ``folder/KIND-*.json``, by rank."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    proc = subprocess.run(
        [*launcher, __file__, mode, json.dumps(spec)],
        env={**os.environ, "OMP_NUM_THREADS": threads},
        capture_output=True,
        text=True,
    )
    results = sorted(
        (json.loads(p.read_text()) for p in folder.glob(f"{kind}-*.json")),
        key=lambda r: r["rank"],
    )
    if proc.returncode != 0 or len(results) != nproc:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"{folder.name} {mode} failed (exit {proc.returncode})")
    return results


def run_arm(arm: str, args: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    """One arm in fresh processes (so each rank's peak memory is its own)."""
    _, _, nproc = ARMS[arm]
    spec = {
        "arm": arm,
        "model": args.model,
        "data": str(data),
        "work": str(work / arm),
        "steps": args.steps,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "lr_multiplier": args.lr_multiplier,
        "seed": args.seed,
    }
    (work / arm).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    states = launch(work / arm, nproc, "--state-bytes", spec, "state")
    if args.state_only:
        return {"processes": nproc, "state_bytes_per_rank": states}
    ranks = launch(work / arm, nproc, "--worker", spec, "rank")
    peaks = [r["peak_memory_bytes"] for r in ranks]
    return {
        "processes": nproc,
        "state_bytes_per_rank": states,
        "peak_memory_bytes_per_rank": peaks,
        "max_peak_memory_bytes": max(peaks),
        "memory_kind": ranks[0]["memory_kind"],
        "train_loss": ranks[0]["train_loss"],
        "steps": ranks[0]["steps"],
        "wall_s": time.time() - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="default (Gemma 3 270M) or a local folder")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=64, help="tokens per example (at most)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr-multiplier", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join(ARMS)}")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument(
        "--state-only",
        action="store_true",
        help="only count each rank's parameter, gradient and optimizer-state bytes",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one rank of one arm
    p.add_argument("--state-bytes", help=argparse.SUPPRESS)  # internal: one rank's state
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    if args.state_bytes:
        state_bytes(json.loads(args.state_bytes))
        return

    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arm(s): {', '.join(sorted(unknown))}")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as tmp:
        work = Path(tmp)
        data = prepare(args, work)
        results = {}
        for arm in arms:
            results[arm] = run_arm(arm, args, data, work)
            states = results[arm]["state_bytes_per_rank"]
            mib = [f"{sum(v for k, v in r.items() if k != 'rank') / 2**20:.0f}" for r in states]
            print(
                f"{arm}: parameters + gradients + Adam per rank {', '.join(mib)} MiB",
                file=sys.stderr,
            )
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
        "arms": results,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if not args.state_only:
        print(
            "peak memory per rank (max over ranks): "
            + "; ".join(
                f"{a} {r['max_peak_memory_bytes'] / 2**30:.2f} GiB" for a, r in results.items()
            )
        )


if __name__ == "__main__":
    main()
