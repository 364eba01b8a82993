"""Fine-tuning commands: tune, validate, diff."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

from ragtune.cli.common import add_dtype_arg, console, print_json
from ragtune.config import Config

# Exit statuses of a run stopped by a signal: 128 + the signal number, as shells report it.
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


def _auto_int(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer, got {value!r}") from None


def _auto_float(value: str) -> float | None:
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {value!r}") from None


def add_model_arg(p: argparse.ArgumentParser, default: str | None, help: str) -> None:
    """``--model`` (the base model, as everywhere in ragtune; ``--base`` is an old spelling)."""
    p.add_argument("--model", "--base", dest="model", default=default, metavar="MODEL", help=help)


def add_parsers(sub: argparse._SubParsersAction, cfg: Config) -> None:
    from ragtune.tune.lora import DEFAULT_ALPHA, DEFAULT_DROPOUT, DEFAULT_RANK

    gen = cfg.generate

    formats = ["auto", "chat", "completion", "text"]
    p = sub.add_parser(
        "tune",
        help="fine-tune a model on your data (LoRA or full fine-tuning)",
        description="Fine-tune the base model on chat JSONL, prompt/completion JSONL or plain "
        "documents. Ctrl-C (or SIGTERM) finishes the current step and saves a checkpoint; "
        "run the same command with --resume to continue. Under torchrun every rank trains "
        "its share of each batch (DistributedDataParallel, or FSDP with --parallel fsdp).",
    )
    p.add_argument("--data", required=True, type=Path, help="training file or folder")
    p.add_argument("--validation", type=Path, help="validation file (same formats)")
    p.add_argument("--method", required=True, choices=["lora", "full"])
    add_model_arg(p, gen.model, f"base model: default, or a local HF model folder ({gen.model})")
    p.add_argument("--epochs", type=_auto_int, default=None, metavar="auto|N")
    p.add_argument("--batch-size", type=_auto_int, default=None, metavar="auto|N")
    p.add_argument("--lr-multiplier", type=_auto_float, default=None, metavar="auto|X")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--format", choices=formats, default="auto", help="data format (auto-detected)")
    p.add_argument("--lora-rank", type=int, default=DEFAULT_RANK)
    p.add_argument("--lora-alpha", type=int, default=DEFAULT_ALPHA)
    p.add_argument("--lora-dropout", type=float, default=DEFAULT_DROPOUT)
    p.add_argument("--max-length", type=int, default=2048, help="tokens per training sequence")
    p.add_argument(
        "--micro-batch-tokens",
        type=int,
        default=2048,
        help="padded tokens per forward pass (gradient accumulation splits larger batches)",
    )
    p.add_argument(
        "--parallel",
        choices=["ddp", "fsdp"],
        default="ddp",
        help="under torchrun: ddp (each rank holds the whole model) or fsdp (parameters, "
        "gradients and optimizer state sharded across ranks); ignored in one process",
    )
    p.add_argument("--device", default=gen.device, help="auto, cpu or cuda")
    add_dtype_arg(p, "training (bfloat16: mixed precision, float32 weights and loss)", gen.dtype)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser(
        "validate",
        help="check fine-tuning data and count its tokens, without training",
        description="Run the data checks of ragtune tune (OpenAI's rules and error categories, "
        "with line numbers), count tokens with the base model's tokenizer and estimate the "
        "cost of training with the auto hyperparameters. Exit status 1 when invalid.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    add_model_arg(p, gen.model, f"base model whose tokenizer counts tokens ({gen.model})")
    p.add_argument("--format", choices=formats, default="auto")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--epochs", type=_auto_int, default=None, metavar="auto|N")
    p.add_argument("--batch-size", type=_auto_int, default=None, metavar="auto|N")
    p.add_argument("--device", default=gen.device, help="device the time estimate is for")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "diff",
        help="show how much fine-tuning changed each module's weights",
        description="Relative change ||dW|| / ||W|| (Frobenius) per module between the base "
        "model and the fine-tuned (merged) weights, largest first, and over all parameters.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder (or a model: default, a folder)")
    add_model_arg(p, None, "base model to compare with (default: the run's base model)")
    p.add_argument("--top", type=int, default=15, help="rows in the table")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=cmd_diff)


class _StopOnSignal:
    """SIGINT / SIGTERM ask the run to stop after the current step; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if _is_main_rank():
            print(
                "\nstopping: finishing this step and saving a checkpoint "
                "(Ctrl-C again aborts without saving)",
                file=sys.stderr,
            )

    def __call__(self) -> bool:
        return self.signum is not None


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def cmd_tune(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from ragtune.tune.loop import StepInfo, train

    # PEFT calls a transformers method that warns about its own deprecation on every run.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    show = _is_main_rank()
    bar = Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s  eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not (show and sys.stderr.isatty()),
    )
    task = bar.add_task("train", total=None, loss="-", tps="-")

    def on_step(info: StepInfo) -> None:
        bar.update(
            task,
            completed=info.step,
            total=info.total_steps,
            loss=f"{info.train_loss:.4f}",
            tps=f"{info.tokens_per_s:.0f}",
        )

    with _StopOnSignal() as stop, bar:
        result = train(
            args.data,
            args.out,
            method=args.method,
            base=args.model,
            validation=args.validation,
            data_format=None if args.format == "auto" else args.format,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr_multiplier=args.lr_multiplier,
            seed=args.seed,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            max_length=args.max_length,
            micro_batch_tokens=args.micro_batch_tokens,
            resume=args.resume,
            device=args.device,
            dtype=args.dtype,
            parallel=args.parallel,
            on_step=on_step,
            should_stop=stop,
        )
    if not show:
        return 0
    run_dir = result.run_dir.resolve()
    summary = {
        "run_dir": str(run_dir),
        "status": result.status,
        "method": result.method,
        "epochs": result.n_epochs,
        "steps": result.steps,
        "total_steps": result.total_steps,
        "trained_tokens": result.trained_tokens,
        "loss_tokens": result.loss_tokens,
        "train_loss": result.train_loss,
        "valid_loss": result.valid_loss,
        "tokens_per_s": result.tokens_per_s,
        "peak_memory_bytes": result.peak_memory_bytes,
        "peak_memory_kind": result.peak_memory_kind,
        "wall_time_s": result.wall_time_s,
        "paths": {
            "manifest": str(run_dir / "manifest.json"),
            "events": str(run_dir / "events.jsonl"),
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            **{k: str(run_dir / v) for k, v in result.paths.items()},
        },
    }
    if args.json:
        print_json(summary)
    if result.status == "interrupted":
        print(
            f"interrupted at step {result.steps}/{result.total_steps}; checkpoint: "
            f"{result.checkpoint}\nresume with the same command plus --resume",
            file=sys.stderr,
        )
        return EXIT_SIGTERM if stop.signum == signal.SIGTERM else EXIT_SIGINT
    if not args.json:
        loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "-"
        valid = f", valid loss {result.valid_loss:.4f}" if result.valid_loss is not None else ""
        print(
            f"done: {result.method}, {result.n_epochs} epoch(s), {result.steps} steps, "
            f"{result.trained_tokens:,} tokens, train loss {loss}{valid}, "
            f"{result.tokens_per_s:.0f} tokens/s, peak memory "
            f"{result.peak_memory_bytes / 2**30:.2f} GiB"
        )
        for name in ("adapter", "merged"):
            if name in result.paths:
                print(f"{name}: {run_dir / result.paths[name]}")
        print(f"ask it: ragtune ask 'QUESTION' --model {run_dir}")
    return 0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cmd_validate(args: argparse.Namespace) -> int:
    from ragtune.tune.validate import validate_file

    report = validate_file(
        args.file,
        base=args.model,
        data_format=None if args.format == "auto" else args.format,
        max_length=args.max_length,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
    )
    if args.json:
        print_json(report.to_dict())
        return 0 if report.valid else 1
    print(f"{report.path}: {report.format} format, {report.examples} valid example(s)")
    for p in report.errors:
        print(f"  error {p}")
    if report.errors_total > len(report.errors):
        print(f"  ... and {report.errors_total - len(report.errors):,} more error(s)")
    for p in report.warnings:
        print(f"  warning {p}")
    if report.warnings_total > len(report.warnings):
        print(f"  ... and {report.warnings_total - len(report.warnings):,} more warning(s)")
    t, tr = report.tokens, report.trained_tokens
    print(
        f"tokens per example: min {t.min}, mean {t.mean:.1f}, max {t.max}, total {t.total:,}"
        f" ({tr.total:,} trained)"
    )
    print(f"examples over {report.max_length} tokens: {report.over_length}")
    for e in report.estimates:
        time_s = f"~{_duration(e.seconds)} ({e.basis})" if e.seconds is not None else e.basis
        print(
            f"{e.method}: {e.n_epochs} epoch(s), batch {e.batch_size}, lr multiplier "
            f"{e.learning_rate_multiplier}, {e.steps} steps, {e.billed_tokens:,} billed tokens "
            f"({e.trained_tokens:,} trained); time {time_s}"
        )
    if report.valid:
        print("valid")
        return 0
    print("invalid: " + ", ".join(f"{k} {v:,}" for k, v in report.error_counts.items()))
    return 1


def cmd_diff(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ragtune.tune.diff import weight_diff

    diff = weight_diff(args.run, args.model)
    if args.json:
        print_json(diff.to_dict())
        return 0
    table = Table(title=f"{diff.tuned} vs {diff.base}")
    table.add_column("module")
    table.add_column("params", justify="right")
    table.add_column("||dW|| / ||W||", justify="right")
    for m in diff.modules[: args.top]:
        table.add_row(m.module, f"{m.params:,}", f"{m.relative:.3e}")
    out = console()
    out.print(table)
    total = diff.to_dict()["total"]
    out.print(
        f"total: {diff.total_relative:.3e} relative change over {total['params']:,} parameters; "
        f"{len(diff.changed)} of {len(diff.modules)} modules changed"
    )
    return 0
