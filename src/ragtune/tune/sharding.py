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

from collections.abc import Mapping
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


def shard(root: nn.Module, model: Any, device: torch.device) -> None:
    """``fully_shard`` each decoder layer of ``model``, then ``root`` (which holds ``model``),
    over all ranks of the process group, on ``device``.

    ``model`` may still be on the CPU: each call moves one unit's parameters to ``device``
    and keeps this rank's shard, so no device ever holds the whole model. The parameters are
    replaced by sharded DTensors: look them up again afterwards.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)


def full_state(tensors: Mapping[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor]:
    """The tensors' full values on the CPU. Sharded DTensors are all-gathered one at a time,
    so every rank must call this for the same tensors in the same order; only ranks with
    ``keep`` (the one that writes) hold on to the results, the others return ``{}``."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, t in tensors.items():
        if isinstance(t, DTensor):
            t = t.full_tensor()
        if keep:
            out[name] = t.detach().cpu()
    return out


def full_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool = True) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded tensor gathered: the one-process format
    (``{}`` on ranks without ``keep``, see :func:`full_state`)."""
    sd = optimizer.state_dict()
    state = {}
    for i, s in sd["state"].items():
        tensors = {k: v for k, v in s.items() if isinstance(v, torch.Tensor)}
        state[i] = {**s, **full_state(tensors, keep)}
    return {**sd, "state": state} if keep else {}


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
