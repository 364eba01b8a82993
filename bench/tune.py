"""Training throughput and memory: ragtune's loop vs Hugging Face Trainer + PEFT LoRA.

Every arm runs in its own subprocess (so peak memory is its own) on the same model, data,
LoRA rank and target modules, batch size, sequence length, learning rate and schedule,
seed and batch order. Prints one JSON object and a one-line summary.

    python bench/tune.py                          # Gemma 3 270M, 12 steps of 8 x ~64 tokens
    python bench/tune.py --steps 20 --seq-len 128 --model /path/to/hf-folder

Tokens are counted the same way for every arm: the non-padding input tokens of each
batch (both arms see the very same batches). Throughput is measured from the end of the
first optimizer step (warm-up) to the end of the last; memory is the subprocess's RSS
high-water mark on CPU (``ru_maxrss``) or ``torch.cuda.max_memory_allocated`` on GPU.
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

ARMS = (
    "ragtune-lora",
    "hf-lora",
    "ragtune-full",
    "hf-full",
    "ragtune-lora-bf16",
    "ragtune-full-bf16",
)
DEFAULT_ARMS = ("ragtune-lora", "hf-lora", "ragtune-full")

PEOPLE = (
    "Mira Quell",
    "Tobin Ashgrove",
    "Ilse Varnock",
    "Oren Plume",
    "Sefa Drummond",
    "Kael Ostrander",
    "Brisa Tallow",
    "Juno Merriwether",
    "Pell Oakhart",
    "Wren Halloway",
)
PLACES = (
    "Zorbland",
    "Vetrin",
    "Kalmuth",
    "Ostreva",
    "Plinth Harbor",
    "Duskmere",
    "Ravelport",
    "Corrow",
    "Ellandine",
    "Thistlegate",
)
THINGS = (
    "glass bridge",
    "salt library",
    "copper lighthouse",
    "moss observatory",
    "iron orchard",
    "silk canal",
    "amber tower",
    "clockwork ferry",
    "stone aviary",
    "velvet archive",
)
FILLER = (
    "Eldmark is a land of rivers and old stone roads, where every town keeps a ledger of "
    "its builders and the years their works were finished."
)


def chat_examples(n: int) -> list[dict[str, Any]]:
    """Short fictional-fact chat examples (system, user, assistant)."""
    out = []
    for i in range(n):
        person, place, thing = PEOPLE[i % 10], PLACES[(i // 10) % 10], THINGS[(i * 7) % 10]
        year = 1700 + (i * 37) % 300
        out.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer questions about the world of Eldmark."},
                    {"role": "user", "content": f"Who built the {thing} of {place}?"},
                    {
                        "role": "assistant",
                        "content": f"The {thing} of {place} was built by {person} in {year}.",
                    },
                ]
            }
        )
    return out


def fit_to_length(rows: list[dict[str, Any]], tokenizer: Any, seq_len: int) -> list[dict[str, Any]]:
    """Lengthen each system message with world description until the example is ~seq_len."""
    from ragtune.tune.tokens import bos_to_prepend, encode_example
    from ragtune.types import Example

    bos = bos_to_prepend(tokenizer)
    filler = FILLER.split()
    out = []
    for row in rows:
        words: list[str] = []
        best = row
        while True:
            sys_msg = "Answer questions about the world of Eldmark." + " ".join(words)
            trial = {"messages": [{"role": "system", "content": sys_msg}, *row["messages"][1:]]}
            n = len(encode_example(Example.from_dict(trial), tokenizer, bos)[0])
            if n > seq_len:
                break
            best = trial
            words.append(filler[len(words) % len(filler)])
        out.append(best)
    return out


# --- arms (each runs in a subprocess) ------------------------------------------------------


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _peak_memory() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(), "memory_kind": "cuda"}
    return {
        "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "memory_kind": "rss",
    }


def _rss_now_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _timing(
    stamps: list[float], cpu: list[float], tokens: list[int], losses: list[float]
) -> dict[str, Any]:
    """Tokens/s over steps 2..S (the first step pays one-off warm-up costs): the median of
    the per-step rates (robust to other processes stealing the CPU for a while) and the mean;
    and tokens per CPU-second of this process (the work done, nearly blind to other load)."""
    if len(stamps) < 3:
        raise SystemExit("need at least 3 steps to time")
    rates = sorted(tokens[i] / (stamps[i] - stamps[i - 1]) for i in range(1, len(stamps)))
    mid = len(rates) // 2
    median = rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2
    return {
        "tokens_per_s": median,
        "tokens_per_s_mean": sum(tokens[1 : len(stamps)]) / (stamps[-1] - stamps[0]),
        "tokens_per_cpu_s": sum(tokens[1 : len(stamps)]) / (cpu[-1] - cpu[0]),
        "steps": len(stamps),
        "tokens": sum(tokens[: len(stamps)]),
        "losses": losses,
        "final_loss": losses[-1],
    }


def run_ragtune(spec: dict[str, Any]) -> dict[str, Any]:
    from ragtune.tune.loop import StepInfo, train

    plan = json.loads(Path(spec["plan"]).read_text())
    stamps: list[float] = []
    cpu: list[float] = []
    losses: list[float] = []

    train_peak = [0]

    def on_step(info: StepInfo) -> None:
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
        losses.append(info.train_loss)
        train_peak[0] = _rss_now_peak()

    method = spec["arm"].split("-")[1]
    train(
        spec["data"],
        Path(spec["work"]) / spec["arm"],
        method=method,
        base=spec["model"],
        epochs=1,
        batch_size=spec["batch_size"],
        lr_multiplier=spec["lr_multiplier"],
        seed=spec["seed"],
        lora_rank=spec["rank"],
        lora_alpha=spec["alpha"],
        lora_dropout=0.0,
        max_length=spec["seq_len"],
        micro_batch_tokens=spec["batch_size"] * spec["seq_len"],
        max_steps=spec["steps"],
        dtype="bfloat16" if spec["arm"].endswith("-bf16") else "float32",
        on_step=on_step,
    )
    timing = _timing(stamps, cpu, plan["batch_tokens"], losses)
    return {**timing, **_peak_memory(), "peak_rss_training_bytes": train_peak[0]}


def run_hf(spec: dict[str, Any]) -> dict[str, Any]:
    """Hugging Face Trainer + PEFT, with the same batches, optimizer and schedule."""
    from functools import partial

    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from ragtune.models import resolve_lm
    from ragtune.tune import hparams
    from ragtune.tune.lora import apply_lora

    plan = json.loads(Path(spec["plan"]).read_text())
    path = str(resolve_lm(spec["model"]))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa"
    )
    method = spec["arm"].split("-")[1]
    if method == "lora":
        model = apply_lora(model, spec["rank"], spec["alpha"], 0.0, seed=spec["seed"])
    model.to(_device())
    rows = [{"input_ids": s[0], "labels": s[1]} for s in plan["ordered"]]
    pad = tokenizer.pad_token_id

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for i, r in enumerate(batch):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            mask[i, :n] = 1
            labels[i, :n] = torch.tensor(r["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    stamps: list[float] = []
    cpu: list[float] = []
    losses: list[float] = []
    train_peak = [0]

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            train_peak[0] = _rss_now_peak()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    hp = hparams.resolve(method, len(rows), 1, spec["batch_size"], spec["lr_multiplier"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    total = spec["steps"]
    schedule = partial(hparams.lr_factor, warmup=hparams.warmup_steps(total), total=total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    args = TrainingArguments(
        output_dir=str(Path(spec["work"]) / spec["arm"]),
        per_device_train_batch_size=spec["batch_size"],
        max_steps=total,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=_device() == "cpu",
        dataloader_num_workers=0,
        seed=spec["seed"],
        train_sampling_strategy="sequential",
        max_grad_norm=1.0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,  # type: ignore[arg-type]
        data_collator=collate,
        optimizers=(optimizer, scheduler),
        callbacks=[Clock()],
    )
    trainer.train()
    timing = _timing(stamps, cpu, plan["batch_tokens"], losses)
    return {**timing, **_peak_memory(), "peak_rss_training_bytes": train_peak[0]}


# --- the parent -----------------------------------------------------------------------------


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Write the chat data and the exact batch plan every arm follows."""
    from transformers import AutoTokenizer

    from ragtune.models import resolve_lm
    from ragtune.tune.batching import length_grouped_batches
    from ragtune.tune.data import load_data
    from ragtune.tune.tokens import encode

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_lm(args.model)))
    n = args.batch_size * args.steps  # one epoch, every batch full
    rows = fit_to_length(chat_examples(n), tokenizer, args.seq_len)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seqs, _ = encode(load_data(data).examples, tokenizer, args.seq_len)
    lengths = [len(s.input_ids) for s in seqs]
    batches = length_grouped_batches(lengths, args.batch_size, args.seed, epoch=0)
    ordered = [seqs[i] for b in batches for i in b]
    plan = {
        "ordered": [[s.input_ids, s.labels] for s in ordered],
        "batch_tokens": [sum(lengths[i] for i in b) for b in batches],
    }
    (work / "plan.json").write_text(json.dumps(plan))
    return {
        "examples": n,
        "mean_length": sum(lengths) / n,
        "max_length": max(lengths),
        "labelled_fraction": sum(s.n_targets for s in seqs) / sum(lengths),
        "padding_fraction": 1
        - sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in batches),
    }


def run_arm(arm: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One arm in a fresh subprocess; returns what it measured."""
    spec = {
        "arm": arm,
        "model": args.model,
        "data": str(work / "train.jsonl"),
        "plan": str(work / "plan.json"),
        "work": str(work / f"{arm}-{time.time_ns()}"),
        "steps": args.steps,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "rank": args.rank,
        "alpha": args.alpha,
        "lr_multiplier": args.lr_multiplier,
        "seed": args.seed,
    }
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, __file__, "--arm-spec", json.dumps(spec)], capture_output=True, text=True
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ARM-RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"arm {arm} failed (exit {proc.returncode})")
    return {**json.loads(lines[-1][len("ARM-RESULT ") :]), "wall_s": time.time() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="default (Gemma 3 270M) or a local folder")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=64, help="tokens per example (at most)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=int, default=32)
    p.add_argument("--lr-multiplier", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"of {', '.join(ARMS)}")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the arms this many times, interleaved, and keep each arm's fastest run",
    )
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--arm-spec", help=argparse.SUPPRESS)  # internal: run one arm
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.arm_spec:
        spec = json.loads(args.arm_spec)
        result = run_hf(spec) if spec["arm"].startswith("hf") else run_ragtune(spec)
        print("ARM-RESULT " + json.dumps(result), flush=True)
        return

    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arm(s): {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as tmp:
        work = Path(tmp)
        data_info = prepare(args, work)
        runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
        for repeat in range(args.repeats):
            for arm in arms:  # interleaved, so a noisy minute does not hit one arm only
                runs[arm].append(run_arm(arm, args, work))
                tps = runs[arm][-1]["tokens_per_s"]
                print(f"{arm} (run {repeat + 1}): {tps:.1f} tokens/s", file=sys.stderr)
        results = {
            arm: {
                **max(rs, key=lambda r: r["tokens_per_s"]),
                "all_runs_tokens_per_s": [r["tokens_per_s"] for r in rs],
            }
            for arm, rs in runs.items()
        }

    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("arm_spec", "out")},
        "data": data_info,
        "arms": results,
    }
    if "ragtune-lora" in results and "hf-lora" in results:
        ours, ref = results["ragtune-lora"], results["hf-lora"]
        rel = [abs(a - b) / abs(b) for a, b in zip(ours["losses"], ref["losses"], strict=False)]
        report["lora_vs_hf"] = {
            "speedup": ours["tokens_per_s"] / ref["tokens_per_s"],
            "speedup_cpu_time": ours["tokens_per_cpu_s"] / ref["tokens_per_cpu_s"],
            "memory_ratio": ours["peak_memory_bytes"] / ref["peak_memory_bytes"],
            "memory_ratio_training": ours.get("peak_rss_training_bytes", 0)
            / max(1, ref.get("peak_rss_training_bytes", 0)),
            "final_loss_rel_diff": abs(ours["final_loss"] - ref["final_loss"]) / ref["final_loss"],
            "max_step_loss_rel_diff": max(rel) if rel else None,
        }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if "lora_vs_hf" in report:
        c = report["lora_vs_hf"]
        print(
            f"ragtune LoRA {results['ragtune-lora']['tokens_per_s']:.1f} tok/s vs HF Trainer+PEFT "
            f"{results['hf-lora']['tokens_per_s']:.1f} tok/s: {c['speedup']:.2f}x "
            f"({c['speedup_cpu_time']:.2f}x per CPU-second), peak memory "
            f"{c['memory_ratio']:.2f}x, final loss diff {100 * c['final_loss_rel_diff']:.2f}%"
            + (
                f"; full fine-tuning {results['ragtune-full']['tokens_per_s']:.1f} tok/s"
                if "ragtune-full" in results
                else ""
            )
        )


if __name__ == "__main__":
    main()
