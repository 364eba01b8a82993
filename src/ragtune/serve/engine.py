"""The one module between the API routes and the shared generator.

The routes call exactly this surface: :meth:`Engine.submit` (a prompt, :class:`SamplingParams`,
a model name) returning a :class:`RequestHandle` that streams :class:`TokenDelta` and ends in
a :class:`Completion`; :meth:`Engine.add_model` / :meth:`Engine.remove_model` to make a
fine-tuned model servable or not; ``count_tokens`` and ``tokenizer``.

Everything decodes on :class:`ragtune.generate.engine.Generator` (continuous batching,
see ``docs/generate.md``):

- the base model is one Generator, loaded by the app's lifespan (:meth:`Engine.load`);
- a LoRA run is an unmerged adapter on that base (``Generator.add_adapter``): it loads on
  first use and the generator evicts the least recently used past its ``max_adapters``;
  requests for the base and for any number of adapters share one batch;
- a LoRA run's checkpoint (``ft:...:ckpt-step-N``, a ``.pt`` training checkpoint) is
  exported once to a PEFT adapter folder next to it (``checkpoints/step-N.adapter/``) and
  then served like a run;
- a full fine-tune, or a checkpoint of one, is its own Generator (weights merged into a
  model), at most :data:`MAX_FULL` of them loaded, least recently used closed first (after
  its running requests finish).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ragtune.errors import RagtuneError
from ragtune.generate.engine import DEFAULT_MAX_ADAPTERS, DEFAULT_SLOTS, Generator
from ragtune.generate.sampling import SamplingParams, TokenDelta
from ragtune.io import write_json_atomic

__all__ = ["Completion", "Engine", "RequestHandle", "SamplingParams", "TokenDelta"]

MAX_FULL = 2  # full fine-tunes kept loaded as their own generators (LRU)
FULL_SLOTS = 4  # concurrent requests per full fine-tune (each slot is a KV cache)
EXPORT_FORMAT_VERSION = 1  # of checkpoints/step-N.adapter/ragtune_export.json


@dataclass(frozen=True)
class Completion:
    text: str  # the whole output, cut before the stop string (not stripped)
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    token_logprobs: list[TokenDelta] | None = None  # the chosen tokens' deltas, with logprobs


class RequestHandle:
    """A request on the generator: iterate for deltas (in a server thread, not the event
    loop), or wait for :meth:`result`. The end-of-sequence token is not reported as a token:
    its delta carries only the remaining text, with ``token_id`` -1."""

    def __init__(self, handle: Any, eos: set[int], logprobs: bool) -> None:
        self._handle, self._eos, self._logprobs = handle, eos, logprobs
        self._deltas: list[TokenDelta] = []
        self._it: Iterator[TokenDelta] | None = None

    def __iter__(self) -> Iterator[TokenDelta]:
        if self._it is None:
            self._it = self._run()
        return self._it

    def _run(self) -> Iterator[TokenDelta]:
        for d in self._handle:
            if d.token_id in self._eos:
                yield TokenDelta(d.text, -1, None)
                continue
            if self._logprobs:
                self._deltas.append(d)
            yield d

    def result(self) -> Completion:
        for _ in self:  # the deltas not read yet (they carry the logprobs)
            pass
        c = self._handle.result()
        return Completion(
            text=c.text,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            finish_reason=c.finish_reason,
            token_logprobs=list(self._deltas) if self._logprobs else None,
        )

    def cancel(self) -> None:
        self._handle.cancel()


class _Full:
    """A full fine-tune's own generator; closed once evicted and idle."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.running = 0
        self.evicted = False


class Engine:
    def __init__(
        self,
        base: str = "default",
        device: str = "auto",
        *,
        slots: int = DEFAULT_SLOTS,
        max_adapters: int = DEFAULT_MAX_ADAPTERS,
    ) -> None:
        self.base_path = base
        self.device = device
        self.slots = slots
        self.max_adapters = max_adapters
        self._base: Generator | None = None
        self._models: dict[str, tuple[Literal["adapter", "full"], Path]] = {}
        self._full: OrderedDict[str, _Full] = OrderedDict()
        self._lock = threading.Lock()

    def load(self) -> Engine:
        with self._lock:
            if self._base is None:
                self._base = Generator.load(
                    self.base_path,
                    device=self.device,
                    dtype="float32",
                    slots=self.slots,
                    max_adapters=self.max_adapters,
                )
        return self

    @property
    def base(self) -> Generator:
        """The base generator (every adapter is registered on it)."""
        self.load()
        assert self._base is not None
        return self._base

    def close(self) -> None:
        """Stop every generator's scheduler thread (requests still running fail)."""
        with self._lock:
            gens = [f.generator for f in self._full.values()]
            self._full.clear()
            if self._base is not None:
                gens.append(self._base)
            self._base = None
            self._models.clear()
        for g in gens:
            g.close()

    @property
    def tokenizer(self) -> Any:
        return self.base.tokenizer

    def count_tokens(self, text: str) -> int:
        return self.base.count_tokens(text)

    @property
    def models(self) -> dict[str, str]:
        """Servable fine-tuned models and how each is served ("adapter" or "full")."""
        with self._lock:
            return {name: kind for name, (kind, _) in self._models.items()}

    def add_model(self, name: str, path: Path) -> None:
        """Make a fine-tuned model servable under ``name``: a run folder, or a checkpoint
        file ``RUN/checkpoints/step-N.pt`` of a run. Cheap when already added."""
        path = Path(path)
        with self._lock:
            if name in self._models and self._models[name][1] == path:
                return
        kind: Literal["adapter", "full"] = "full"
        source = path
        if path.is_dir():
            if _has_adapter(path):
                kind = "adapter"
        elif _checkpoint_is_lora(path):
            kind, source = "adapter", export_checkpoint_adapter(path)
        if kind == "adapter":
            self.base.add_adapter(name, source)
        with self._lock:
            old = self._models.get(name)
            self._models[name] = (kind, path)
            full = self._full.pop(name, None)
        if old is not None and old[0] == "adapter" and kind == "full":
            self.base.remove_adapter(name)
        if full is not None:
            self._retire(full)

    def remove_model(self, name: str) -> None:
        with self._lock:
            entry = self._models.pop(name, None)
            full = self._full.pop(name, None)
        if entry is not None and entry[0] == "adapter":
            self.base.remove_adapter(name)
        if full is not None:
            self._retire(full)

    def submit(
        self, prompt: str, params: SamplingParams, model: str | None = None
    ) -> RequestHandle:
        """Queue ``prompt`` for ``model`` (None: the base). Raises RagtuneError when the
        prompt plus ``max_tokens`` does not fit the context."""
        gen, adapter, full = self._target(model)  # a full fine-tune counts this request
        try:
            ids = list(gen.tokenizer(prompt, add_special_tokens=True)["input_ids"])
            if len(ids) + params.max_tokens > gen.max_context:
                raise RagtuneError(
                    f"The prompt has {len(ids)} tokens; with max_tokens {params.max_tokens} "
                    f"it exceeds the model's context of {gen.max_context}",
                    "shorten the messages or lower max_tokens",
                )
            done = None if full is None else (lambda: self._done(full))
            h = gen.submit(ids, params, adapter, on_done=done)
        except BaseException:
            if full is not None:
                self._done(full)
            raise
        return RequestHandle(h, gen.eos_ids, params.logprobs)

    def complete(
        self, requests: list[tuple[str, SamplingParams]], model: str | None = None
    ) -> list[Completion]:
        """Submit every (prompt, params) at once, so they decode in one batch, and wait for
        all; if one cannot be submitted, the ones already queued are cancelled."""
        handles: list[RequestHandle] = []
        try:
            for prompt, params in requests:
                handles.append(self.submit(prompt, params, model))
            return [h.result() for h in handles]
        finally:
            for h in handles:
                h.cancel()  # a no-op for finished requests

    def _target(self, name: str | None) -> tuple[Generator, str | None, _Full | None]:
        base = self.base
        if name is None:
            return base, None, None
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                raise RagtuneError(f"The model {name} is not loaded")
            kind, path = entry
            if kind == "adapter":
                return base, name, None
            full = self._full.get(name)
            if full is not None:
                self._full.move_to_end(name)
                full.running += 1
                return full.generator, None, full
        full = _Full(_load_full(self.base_path, path, self.device))  # outside the lock: slow
        with self._lock:
            spare = None
            if self._models.get(name) != entry:  # removed or replaced meanwhile: use once
                full.evicted = True
            elif name in self._full:  # another thread loaded it meanwhile
                spare, full = full, self._full[name]
                self._full.move_to_end(name)
            else:
                self._full[name] = full
            full.running += 1
            evicted = []
            while len(self._full) > MAX_FULL:
                evicted.append(self._full.popitem(last=False)[1])
        for f in evicted:
            self._retire(f)
        if spare is not None:
            spare.generator.close()
        return full.generator, None, full

    def _retire(self, full: _Full) -> None:
        with self._lock:
            full.evicted = True
            idle = full.running == 0
        if idle:
            full.generator.close()

    def _done(self, full: _Full) -> None:  # from the generator's thread
        with self._lock:
            full.running -= 1
            idle = full.evicted and full.running == 0
        if idle:
            full.generator.close()


def _has_adapter(path: Path) -> bool:
    return (path / "adapter" / "adapter_config.json").exists() or (
        path / "adapter_config.json"
    ).exists()


def _run_lora(run_dir: Path) -> dict[str, Any] | None:
    """The run's LoRA hyperparameters (rank, alpha, dropout), None for a full fine-tune."""
    from ragtune.tune.events import read_manifest

    manifest = read_manifest(run_dir)
    if manifest is None:
        raise RagtuneError(f"{run_dir} is not a ragtune run")
    lora: dict[str, Any] | None = manifest["hyperparameters"].get("lora")
    return lora or None


def _checkpoint_is_lora(path: Path) -> bool:
    return _run_lora(path.parent.parent) is not None


def export_checkpoint_adapter(path: Path) -> Path:
    """A LoRA run's training checkpoint ``RUN/checkpoints/step-N.pt`` as a PEFT adapter
    folder ``RUN/checkpoints/step-N.adapter`` (written once, atomically; reused after)."""
    from safetensors.torch import save_file

    from ragtune.tune.checkpoint import load_checkpoint

    out = path.with_suffix(".adapter")
    if (out / "adapter_model.safetensors").exists():
        return out
    run_dir = path.parent.parent
    lora = _run_lora(run_dir)
    assert lora is not None
    state = load_checkpoint(path)
    # PEFT's saved names drop the adapter name (".default") that live parameters carry
    tensors = {
        k.replace(".default.weight", ".weight"): v.contiguous()
        for k, v in state["trainable"].items()
    }
    targets = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in tensors})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": int(lora["rank"]),
        "lora_alpha": lora["alpha"],
        "lora_dropout": lora["dropout"],
        "target_modules": targets,
        "bias": "none",
    }
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "adapter_model.safetensors"))
    write_json_atomic(tmp / "adapter_config.json", config)
    write_json_atomic(
        tmp / "ragtune_export.json",
        {"format_version": EXPORT_FORMAT_VERSION, "checkpoint": path.name, "step": state["step"]},
    )
    try:
        os.replace(tmp, out)
    except OSError:  # another thread or process exported it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _load_full(base: str, path: Path, device: str) -> Generator:
    """A full fine-tune as its own generator: a finished run's merged model, or the base
    with a checkpoint's trained weights copied in."""
    if path.is_dir():
        return Generator.load(str(path), device=device, dtype="float32", slots=FULL_SLOTS)
    import torch

    from ragtune.models import load_lm
    from ragtune.tune.checkpoint import load_checkpoint

    model, tokenizer = load_lm(base, device=device, dtype="float32")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in load_checkpoint(path)["trainable"].items():
            params[name].copy_(value)
    model.eval()
    return Generator(model, tokenizer, name=str(path), slots=FULL_SLOTS)
