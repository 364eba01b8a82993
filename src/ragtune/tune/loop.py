"""The fine-tuning recipe: one function, top to bottom.

load data -> load model (+ LoRA) -> optimizer and schedule -> loop (length-grouped batches,
gradient accumulation, loss on labelled positions only, clipping) -> evaluate ->
checkpoint at each epoch end (and when asked to stop) -> save adapter, merged model and
manifest. Runs in one process or under ``torchrun``: DistributedDataParallel, or fully
sharded (FSDP2, :mod:`ragtune.tune.sharding`) with ``parallel="fsdp"``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from ragtune import __version__
from ragtune.errors import RagtuneError
from ragtune.models import describe, pick_dtype, resolve_lm
from ragtune.tune import checkpoint as ckpt
from ragtune.tune import hparams
from ragtune.tune.batching import collate, length_grouped_batches, micro_batches, rank_share
from ragtune.tune.data import DataFormat, load_data, require_valid
from ragtune.tune.distributed import (
    all_gather_objects,
    all_reduce_sum,
    any_rank,
    barrier,
    device_for,
    dist_info_from_env,
    process_setup,
    same_count,
)
from ragtune.tune.events import RUN_KIND, EventLog, write_manifest
from ragtune.tune.lora import DEFAULT_ALPHA, DEFAULT_DROPOUT, DEFAULT_RANK, save_outputs
from ragtune.tune.loss import LabelledLoss
from ragtune.tune.parts import copy_trainable, evaluate, load_model, peak_memory
from ragtune.tune.rundir import data_record, open_run_dir
from ragtune.tune.sharding import (
    Parallel,
    full_optimizer_state,
    full_state,
    set_gradient_sync,
    shard,
    shard_optimizer_state,
)
from ragtune.tune.tokens import Encoder

log = logging.getLogger(__name__)

VALID_SAMPLE = 64  # validation sequences scored at each evaluation step (all at epoch ends)
EVALS_PER_RUN = 10


@dataclass(frozen=True)
class StepInfo:
    """What a progress display needs after each optimizer step."""

    step: int
    total_steps: int
    epoch: float  # fractional: 1.5 = half way through the second epoch
    train_loss: float
    tokens_per_s: float
    lr: float
    eta_s: float
    valid_loss: float | None = None


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    status: Literal["succeeded", "interrupted"]
    method: str
    n_epochs: int
    steps: int
    total_steps: int
    trained_tokens: int  # non-padding tokens processed, all epochs (what OpenAI bills)
    loss_tokens: int  # tokens that carried a loss
    train_loss: float | None
    valid_loss: float | None  # full validation loss at the end, if there is a validation set
    tokens_per_s: float
    peak_memory_bytes: int
    peak_memory_kind: str  # "rss" (CPU high-water mark) or "cuda" (max allocated)
    wall_time_s: float
    checkpoint: Path | None = None
    paths: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        d["checkpoint"] = str(self.checkpoint) if self.checkpoint else None
        return d


def train(
    data: str | Path,
    out: str | Path,
    *,
    method: hparams.Method = "lora",
    base: str = "default",
    validation: str | Path | None = None,
    data_format: DataFormat | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr_multiplier: float | None = None,
    seed: int = 0,
    lora_rank: int = DEFAULT_RANK,
    lora_alpha: int = DEFAULT_ALPHA,
    lora_dropout: float = DEFAULT_DROPOUT,
    max_length: int = 2048,
    micro_batch_tokens: int = 2048,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    resume: bool = False,
    device: str = "auto",
    dtype: str = "float32",
    max_steps: int | None = None,
    parallel: Parallel = "ddp",
    on_step: Callable[[StepInfo], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Fine-tune ``base`` on ``data`` into the run folder ``out``.

    ``None`` for epochs / batch_size / lr_multiplier means ``auto`` (see
    :mod:`ragtune.tune.hparams`). ``should_stop`` is polled after every optimizer step; when
    it returns True the run writes a checkpoint and returns with status ``interrupted``;
    ``resume=True`` continues from the newest checkpoint in ``out`` and ends with the same
    weights as an uninterrupted run. ``dtype``: the compute precision (``float32``,
    ``bfloat16``, or ``auto``, see :func:`ragtune.models.pick_dtype`); weights, optimizer
    state and the loss stay float32 either way (mixed precision, see
    :mod:`ragtune.tune.loss`). ``parallel``: how ranks share the work under torchrun,
    ``ddp`` (every rank holds the whole model) or ``fsdp`` (parameters, gradients and
    optimizer state sharded across ranks); ignored in one process.
    """
    started = time.time()
    dist = dist_info_from_env()
    dev = device_for(device, dist)
    compute_dtype = pick_dtype(dtype, dev)
    run_dir = Path(out).expanduser()
    base_path = resolve_lm(base)
    from transformers import AutoTokenizer

    with process_setup(dist, dev):
        # --- 1. Data: read, validate and tokenize line by line (only the compact token
        # sequences are kept, whatever the file's size); any error refuses the run.
        tokenizer = AutoTokenizer.from_pretrained(str(base_path))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        train_encoder = Encoder(tokenizer, max_length)
        train_data = load_data(data, data_format, encoder=train_encoder)
        require_valid(train_data)
        valid_data, valid_seqs = None, []
        if validation is not None:
            valid_encoder = Encoder(tokenizer, max_length)
            valid_data = load_data(validation, data_format, 0, valid_encoder)
            require_valid(valid_data, "validation data")
            valid_seqs = valid_encoder.result()[0]
        train_seqs, truncated = train_encoder.result()
        if not train_seqs:
            raise RagtuneError("No training sequence has any assistant token to train on")
        hp = hparams.resolve(method, len(train_seqs), epochs, batch_size, lr_multiplier)
        if hp.batch_size > len(train_seqs):
            raise RagtuneError(
                f"--batch-size {hp.batch_size} is larger than the {len(train_seqs)} examples",
                "use a smaller --batch-size, or auto",
            )
        lengths = [len(s.input_ids) for s in train_seqs]
        steps_per_epoch = math.ceil(len(train_seqs) / hp.batch_size)
        total_steps = hp.n_epochs * steps_per_epoch
        if max_steps is not None:
            total_steps = min(total_steps, max_steps)
        warmup = hparams.warmup_steps(total_steps)
        eval_every = max(1, math.ceil(total_steps / EVALS_PER_RUN))
        settings: dict[str, Any] = {
            **hp.to_dict(),
            "seed": seed,
            "lora": (
                {"rank": lora_rank, "alpha": lora_alpha, "dropout": lora_dropout}
                if method == "lora"
                else None
            ),
            "max_length": max_length,
            "micro_batch_tokens": micro_batch_tokens,
            "optimizer": "adamw",
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "weight_decay": weight_decay,
            "max_grad_norm": max_grad_norm,
            "schedule": "linear warm-up, cosine decay to 0",
            "warmup_steps": warmup,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "world_size": dist.world_size,
            "parallel": parallel if dist.enabled else None,
            "compute_dtype": str(compute_dtype).removeprefix("torch."),
        }

        # --- 2. The run folder: a new run, or the newest checkpoint of an interrupted one.
        manifest: dict[str, Any] = {
            "format_version": 1,
            "kind": RUN_KIND,
            "ragtune_version": __version__,
            "status": "running",
            "method": method,
            "base_model": describe(base_path),
            "data": {
                "train": data_record(train_data, len(train_seqs)),
                "validation": data_record(valid_data, len(valid_seqs)) if valid_data else None,
            },
            "hyperparameters": settings,
            "device": dev.type,
            "created_at": _now(),
        }
        state = open_run_dir(run_dir, manifest, resume)
        # Every rank reads the checkpoint, rank 0 writes: on several hosts ``out`` must be
        # storage they all share (an NFS folder, say), which this checks.
        found = all_gather_objects(state["step"] if state else None, dist)
        if len(set(found)) > 1:
            raise RagtuneError(
                f"The ranks see different checkpoints in {run_dir} (steps {found})",
                "on several hosts, --out must be a folder every host shares",
            )
        barrier(dist)  # every rank has looked at the folder before rank 0 writes to it
        events = EventLog(run_dir / "events.jsonl", enabled=dist.is_main)
        if dist.is_main:
            if state is None:
                events.drop_after(0)  # a --resume that found no checkpoint starts over
                events.message(f"Fine-tuning {method} of {base_path.name} on {train_data.path}")
                for i in truncated[:20]:
                    src, line = train_data.origins[i]
                    events.message(
                        f"{src}:{line} is longer than {max_length} tokens and was truncated",
                        "warn",
                    )
            else:
                events.drop_after(state["step"])
                events.message(f"Resumed from step {state['step']}", step=state["step"])
            write_manifest(run_dir, manifest)
        barrier(dist)

        # --- 3. Model: the base LM, with LoRA adapters or trained whole; under FSDP each
        # rank then keeps its shard of every parameter.
        new_model = partial(load_model, base_path, method, lora_rank, lora_alpha, lora_dropout)
        model = new_model(seed)
        if state is not None:
            copy_trainable(model, state["trainable"])
        model.train()
        fsdp = dist.enabled and parallel == "fsdp"
        loss_module = LabelledLoss(model, compute_dtype=compute_dtype, cache_head=not fsdp)
        if fsdp:
            shard(loss_module, model, dev)  # moves one layer at a time to the device
        else:
            model.to(dev)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}

        # --- 4. Optimizer and schedule; restore everything from a checkpoint when resuming.
        optimizer = torch.optim.AdamW(
            list(trainable.values()),
            lr=hp.learning_rate,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, partial(hparams.lr_factor, warmup=warmup, total=total_steps)
        )
        step, epoch0, batch0 = 0, 0, 0
        counters = {"trained_tokens": 0, "loss_tokens": 0, "wall_time_s": 0.0}
        last: dict[str, float | None] = {"train_loss": None, "full_valid_loss": None}
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            if fsdp:
                shard_optimizer_state(optimizer)
            scheduler.load_state_dict(state["scheduler"])
            rngs = state["rng"]  # one per rank (dropout draws differ between ranks)
            ckpt.set_rng_state(rngs[dist.rank] if len(rngs) == dist.world_size else rngs[0])
            step, epoch0, batch0 = state["step"], state["epoch"], state["batch"]
            counters.update(state["counters"])
            last.update(state["last"])
        forward: Any = loss_module  # under FSDP, sharded in place
        if dist.enabled and not fsdp:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(
                loss_module, device_ids=[dev.index] if dev.type == "cuda" else None
            )

        def save_checkpoint(epoch: int, batch: int) -> Path | None:
            payload = {
                "epoch": epoch,
                "batch": batch,
                "trainable": full_state(trainable, keep=dist.is_main),
                "optimizer": full_optimizer_state(optimizer, keep=dist.is_main),
                "scheduler": scheduler.state_dict(),
                "rng": all_gather_objects(ckpt.rng_state(), dist),
                "counters": {**counters, "wall_time_s": counters["wall_time_s"] + session_s()},
                "last": last,
            }
            path = (
                ckpt.save_checkpoint(run_dir / "checkpoints", step, payload)
                if dist.is_main
                else None
            )
            if path is not None:
                events.message(f"Checkpoint saved at step {step}: {path}", step=step)
            barrier(dist)
            return path

        session_start = time.perf_counter()

        def session_s() -> float:
            return time.perf_counter() - session_start

        # --- 5. The loop.
        pad_id = int(tokenizer.pad_token_id)
        valid_sample = valid_seqs[:VALID_SAMPLE]
        start_step = step
        train_s = 0.0  # time in optimizer steps this session (excludes evaluation and saving)
        session_tokens = 0
        stop = False
        last_ckpt: Path | None = None
        last_ckpt_step = -1
        epoch, b = epoch0, batch0
        for epoch in range(epoch0, hp.n_epochs):
            batches = length_grouped_batches(lengths, hp.batch_size, seed, epoch)
            b = batch0 if epoch == epoch0 else 0
            while b < len(batches) and step < total_steps and not stop:
                t0 = time.perf_counter()
                batch = batches[b]
                n_targets = sum(train_seqs[i].n_targets for i in batch)  # same on every rank
                mine = rank_share(batch, lengths, dist.rank, dist.world_size)
                # A rank with no rows (a short last batch) still runs one zero-weighted
                # micro-batch, so that every rank joins the same gradient all-reduce.
                scale = dist.world_size / n_targets if mine else 0.0
                micros = micro_batches(mine or batch[:1], lengths, micro_batch_tokens)
                n_real = len(micros)
                if fsdp:  # padded with zero-weighted repeats: same number of calls per rank
                    micros = same_count(micros, dev, dist)
                loss_sum = correct = tokens = 0.0
                for k, rows in enumerate(micros):
                    ids, mask, labels = collate([train_seqs[i] for i in rows], pad_id, dev)
                    with set_gradient_sync(forward, k == len(micros) - 1):
                        loss, n_correct = forward(ids, mask, labels)
                        (loss * (scale if k < n_real else 0.0)).backward()
                    if mine and k < n_real:
                        loss_sum += loss.item()
                        correct += n_correct.item()
                        tokens += mask.sum().item()
                torch.nn.utils.clip_grad_norm_(list(trainable.values()), max_grad_norm)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                b += 1
                loss_sum, correct, tokens = all_reduce_sum([loss_sum, correct, tokens], dev, dist)
                step_s = time.perf_counter() - t0
                train_s += step_s
                session_tokens += int(tokens)
                counters["trained_tokens"] += int(tokens)
                counters["loss_tokens"] += n_targets
                last["train_loss"] = loss_sum / n_targets
                metrics: dict[str, Any] = {
                    "step": step,
                    "train_loss": loss_sum / n_targets,
                    "train_mean_token_accuracy": correct / n_targets,
                    "valid_loss": None,
                    "valid_mean_token_accuracy": None,
                    "tokens_per_s": tokens / step_s,
                    "lr": lr,
                    "epoch": round(epoch + b / len(batches), 4),
                }
                if valid_sample and (step % eval_every == 0 or step == total_steps):
                    v_loss, v_acc = evaluate(
                        loss_module, valid_sample, micro_batch_tokens, pad_id, dev, dist, fsdp
                    )
                    metrics.update(valid_loss=v_loss, valid_mean_token_accuracy=v_acc)
                events.metrics(**metrics)
                if on_step is not None and dist.is_main:
                    per_step = train_s / (step - start_step)
                    on_step(
                        StepInfo(
                            step=step,
                            total_steps=total_steps,
                            epoch=metrics["epoch"],
                            train_loss=metrics["train_loss"],
                            tokens_per_s=session_tokens / train_s,
                            lr=lr,
                            eta_s=per_step * (total_steps - step),
                            valid_loss=metrics["valid_loss"],
                        )
                    )
                stop = should_stop is not None and any_rank(should_stop(), dev, dist)
            if b == len(batches):  # the epoch is complete
                if valid_seqs:
                    v_loss, v_acc = evaluate(
                        loss_module, valid_seqs, micro_batch_tokens, pad_id, dev, dist, fsdp
                    )
                    last["full_valid_loss"] = v_loss
                    events.metrics(
                        step=step,
                        epoch=epoch + 1,
                        full_valid_loss=v_loss,
                        full_valid_mean_token_accuracy=v_acc,
                    )
                last_ckpt, last_ckpt_step = save_checkpoint(epoch + 1, 0), step
            if stop or step >= total_steps:
                break

        # --- 6. Interrupted: make sure the newest checkpoint is this step, and stop.
        counters["wall_time_s"] += session_s()
        result = dict(
            run_dir=run_dir,
            method=method,
            n_epochs=hp.n_epochs,
            steps=step,
            total_steps=total_steps,
            trained_tokens=counters["trained_tokens"],
            loss_tokens=counters["loss_tokens"],
            train_loss=last["train_loss"],
            valid_loss=last["full_valid_loss"],
            tokens_per_s=session_tokens / train_s if train_s else 0.0,
            wall_time_s=counters["wall_time_s"],
            **peak_memory(dev),
        )
        if step < total_steps:
            if last_ckpt_step != step:  # (an epoch end has just been saved otherwise)
                last_ckpt = save_checkpoint(epoch, b)
            if dist.is_main:
                events.message(
                    f"Stopped at step {step}/{total_steps}; resume with --resume", "warn", step
                )
                write_manifest(
                    run_dir,
                    {
                        **manifest,
                        "status": "interrupted",
                        "result": _jsonable(result),
                        "checkpoint": str(last_ckpt),
                    },
                )
            return RunResult(status="interrupted", checkpoint=last_ckpt, **result)

        # --- 7. Save the adapter, the merged model and the manifest (rank 0). Under FSDP
        # rank 0 puts the gathered weights into a fresh, unsharded copy of the model.
        paths: dict[str, str] = {}
        if fsdp:
            weights = full_state(trainable, keep=dist.is_main)
            model = new_model(seed) if dist.is_main else None
            if model is not None:
                copy_trainable(model, weights)
        if dist.is_main:
            model.eval()
            paths = save_outputs(model, tokenizer, run_dir, method)
            paths.update(events="events.jsonl", checkpoints="checkpoints")
            events.message("Fine-tuned model saved; the run succeeded", step=step)
            write_manifest(
                run_dir,
                {
                    **manifest,
                    "status": "succeeded",
                    "result": _jsonable(result),
                    "outputs": paths,
                    "finished_at": _now(),
                },
            )
        barrier(dist)
        log.info("run finished in %.0f s", time.time() - started)
        return RunResult(status="succeeded", paths=paths, **result)


# --- building blocks --------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in result.items()}
