"""Fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``) for
``ragtune tune --parallel fsdp`` under torchrun.

Each decoder layer is one FSDP unit, and the loss module (embeddings, final norm, the tied
output head and anything else left) is the root unit: every rank keeps 1/N of each
parameter, of its gradient and of its optimizer state, and all-gathers one unit's full
parameters just before it runs (Zhao et al. 2023, "PyTorch FSDP", arXiv:2304.11277; the
ZeRO-3 scheme of Rajbhandari et al. 2020, arXiv:1910.02054). FSDP2 runs on CPUs over gloo
as well as on GPUs over NCCL (torch 2.13; checked by tests/tune/test_fsdp.py).

Checkpoints stay in the one-process format: the trainable weights and the optimizer state
are gathered into full tensors (every rank takes part, rank 0 writes them), and a resumed
run shards them again, so a checkpoint moves freely between FSDP, DDP and one process.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

Parallel = Literal["ddp", "fsdp"]
PARALLEL_MODES: tuple[Parallel, ...] = ("ddp", "fsdp")


def decoder_layers(model: Any) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face causal LM, plain or PEFT-wrapped."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(causal.get_decoder(), "layers", None)
    if layers is None:
        from ragtune.errors import RagtuneError

        raise RagtuneError(
            f"{type(causal).__name__} has no decoder .layers to shard with FSDP",
            "train it with --parallel ddp",
        )
    return list(layers)


def shard(root: nn.Module, model: Any) -> None:
    """``fully_shard`` each decoder layer of ``model``, then ``root`` (which holds ``model``).

    The module's parameters are replaced by sharded DTensors: look them up again afterwards.
    """
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(root)


def full(t: torch.Tensor) -> torch.Tensor:
    """A tensor's full value on the CPU (a sharded DTensor is all-gathered: every rank must
    call this for the same tensors in the same order)."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().cpu()


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded tensor gathered: the one-process format."""
    sd = optimizer.state_dict()
    state = {
        i: {k: full(v) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for i, s in sd["state"].items()
    }
    return {**sd, "state": state}


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` of a full (one-process) state: shard each per-parameter
    tensor (Adam's moments) like its parameter; scalars such as ``step`` stay as they are."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for p, s in optimizer.state.items():
        if not isinstance(p, DTensor):
            continue
        for k, v in s.items():
            if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.shape == p.shape:
                # every rank holds the same full tensor (read from the checkpoint): each keeps
                # its own chunk, with no communication
                s[k] = distribute_tensor(v, p.device_mesh, p.placements, src_data_rank=None)


def set_gradient_sync(forward: nn.Module, sync: bool) -> Any:
    """A context for one micro-batch's backward: reduce gradients across ranks only when
    ``sync`` (the last micro-batch of a step), else accumulate them locally."""
    import contextlib

    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(forward, FSDPModule):
        forward.set_requires_gradient_sync(sync)
    elif isinstance(forward, DistributedDataParallel) and not sync:
        return forward.no_sync()
    return contextlib.nullcontext()
