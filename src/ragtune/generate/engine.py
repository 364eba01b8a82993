"""The one generator behind ask, chat, compare, make-qa and the service.

For Gemma 3 models (the default and every model ragtune fine-tunes from it) decoding runs
on ragtune's own forward (:mod:`ragtune.generate.gemma`) under a continuous-batching
scheduler (:mod:`ragtune.generate.scheduler`): requests from any thread share one batch,
each row may use its own LoRA adapter on the shared base (:mod:`ragtune.generate.lora`),
and weights may be int8 on the CPU (:mod:`ragtune.generate.quant`). Other architectures
fall back to transformers (greedy :meth:`Generator.generate` only).

:meth:`Generator.generate` is greedy and deterministic for a given model, prompt and
precision; :meth:`Generator.submit` takes :class:`SamplingParams` and streams.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ragtune.config import LmBackend
from ragtune.errors import RagtuneError
from ragtune.generate.prompts import STOP_STRINGS
from ragtune.generate.sampling import Completion, SamplingParams, TokenDelta

if TYPE_CHECKING:
    import torch

    from ragtune.generate.scheduler import RequestHandle, Scheduler

__all__ = [
    "Completion",
    "Generation",
    "Generator",
    "SamplingParams",
    "TokenDelta",
    "cut_at_stop",
    "load_generator",
]

log = logging.getLogger(__name__)

Finish = Literal["stop", "eos", "length"]
# "int8": every projection and the output head; "int8-layers": the layers only, the head
# (tied to the embedding) stays in the compute dtype; "int4": group-wise 4-bit weights for
# every projection and the head (half int8's bytes; see ragtune.generate.quant)
Quantize = Literal["none", "int8", "int8-layers", "int4"]
# (projection bits, head bits) per quantize setting; 16 = the compute dtype
QUANT_BITS: dict[str, tuple[int, int]] = {
    "none": (16, 16),
    "int8": (8, 8),
    "int8-layers": (8, 16),
    "int4": (4, 4),
}
Backend = LmBackend  # native, transformers or llamacpp
DEFAULT_SLOTS = 16
DEFAULT_MAX_SEQ_LEN = 4096
DEFAULT_MAX_ADAPTERS = 8


@dataclass(frozen=True)
class Generation:
    text: str  # the continuation, cut before the first stop string, stripped
    prompt_tokens: int
    new_tokens: int  # tokens generated for this prompt (up to its stop)
    finish: Finish
    seconds: float  # wall time from the prompt's prefill to its last token


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest occurrence of any stop string."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def check_llamacpp(
    quantize: Quantize = "none", device: str = "auto", installed: bool = True
) -> None:
    """Refuse, in one line, what the llama.cpp backend cannot run: int8 weights, a device
    other than the CPU, or (``installed``) no ``llama-cpp-python`` installed."""
    from ragtune.generate.llamacpp import llamacpp_available, not_installed

    if quantize != "none" or device not in ("auto", "cpu"):
        raise RagtuneError(
            "The llama.cpp backend runs its GGUF as stored, on the CPU",
            "drop --int8/--int4 / --device, or use the native backend",
        )
    if installed and not llamacpp_available():
        raise not_installed()


def load_generator(model: str, device: str, dtype: str, backend: Backend) -> Generator:
    """The generator of ``compare``, ``demo`` and ``make-qa``: ``model`` (``default``, a
    model folder or a ``ragtune tune`` run) on ``backend``, every backend running the same
    weights. For llama.cpp that is an f16 GGUF of the model folder, written once
    (:func:`ragtune.generate.llamacpp.gguf_of_folder`) inside a ``ragtune tune`` run (its
    merged model: llama.cpp serves no per-request adapters here) or else under
    ``$RAGTUNE_HOME/cache/gguf``."""
    if backend != "llamacpp":
        return Generator.load(model, device=device, dtype=dtype, backend=backend)
    from ragtune.config import ragtune_home
    from ragtune.generate.llamacpp import gguf_of_folder
    from ragtune.models import resolve_lm

    check_llamacpp(device=device)
    folder = resolve_lm(model)
    in_run = folder.name == "merged" and (folder.parent / "manifest.json").is_file()
    cache = folder.parent / "gguf" if in_run else ragtune_home() / "cache" / "gguf"
    return Generator.load(str(gguf_of_folder(folder, cache)), backend="llamacpp")


def _is_gemma(model: Any) -> bool:
    return getattr(model.config, "model_type", "") == "gemma3_text"


class Generator:
    """A loaded model and its tokenizer. Build with :meth:`load`.

    ``slots`` requests run at once, each with a KV cache of ``max_seq_len`` positions,
    allocated up front; ``max_adapters`` LoRA adapters stay loaded (LRU past that).
    ``speculate`` > 0 turns on prompt-lookup speculative decoding for greedy requests (up
    to that many draft tokens verified per step; opt-in: see the scheduler).
    """

    tokenizer: Any
    name: str
    quantize: Quantize
    backend: Backend
    model: Any  # kept only for the transformers fallback
    eos_ids: set[int]
    _sched: Scheduler | None
    _device: torch.device
    _max_context: int

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str = "",
        *,
        dtype: torch.dtype | None = None,
        quantize: Quantize = "none",
        slots: int = DEFAULT_SLOTS,
        max_seq_len: int | None = DEFAULT_MAX_SEQ_LEN,
        max_adapters: int = DEFAULT_MAX_ADAPTERS,
        speculate: int = 0,
        backend: Literal["native", "transformers"] = "native",
    ) -> None:
        """``backend="transformers"`` keeps transformers' own model and decodes with it
        (:mod:`ragtune.generate.hf_fallback`: greedy batches only), as ragtune did before
        its native engine; other architectures than Gemma 3 always do."""
        import torch

        if speculate < 0:
            raise RagtuneError("speculate must be 0 (off) or a number of draft tokens")
        self._setup(tokenizer, name, quantize, next(model.parameters()).device)
        self.model = model
        self._max_context = int(getattr(model.config, "max_position_embeddings", 2048))
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_ids = {tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos])
        self.eos_ids = {int(e) for e in eos_ids if e is not None}
        gemma = _is_gemma(model)
        if backend == "transformers" or not gemma:
            why = "the transformers backend" if gemma else f"{name}'s architecture"
            if quantize != "none" or speculate:
                what = f"{quantize} weights" if quantize != "none" else "--speculate"
                flag = f"--{quantize}" if quantize != "none" else "--speculate"
                raise RagtuneError(
                    f"{what} need the native engine, which {why} does not use",
                    f"drop {flag}, or use --lm-backend native with a Gemma 3 model",
                )
            if not gemma:
                log.info("%s: no native engine for this architecture; using transformers", name)
            self.backend = "transformers"
            return
        from ragtune.generate.gemma import GemmaEngine, GemmaSpec, GemmaWeights, KVCache
        from ragtune.generate.lora import GROUPS, AdapterBank
        from ragtune.generate.quant import int8_gemm_available
        from ragtune.generate.scheduler import Scheduler

        compute = dtype or next(model.parameters()).dtype
        if quantize != "none":
            if self._device.type != "cpu":
                raise RagtuneError(
                    f"{quantize} weights are for the CPU", f"drop --{quantize} on a GPU"
                )
            if quantize == "int4" or not int8_gemm_available():
                # the int4 and weight-only int8 kernels' fast path takes bf16 activations;
                # the int8 GEMM computes in its own integers and keeps the model's dtype
                compute = torch.bfloat16
        weights = GemmaWeights(model, compute, *QUANT_BITS[quantize])
        spec: GemmaSpec = weights.spec
        self._max_context = min(spec.max_positions, max_seq_len or spec.max_positions)
        cache = KVCache(spec, slots, self._max_context, compute, self._device, slack=speculate)
        q, kv = spec.n_heads * spec.head_dim, spec.n_kv * spec.head_dim
        dims = {
            "qkv": (spec.hidden, (q, kv, kv)),
            "o": (q, (spec.hidden,)),
            "gate_up": (spec.hidden, (spec.inter, spec.inter)),
            "down": (spec.inter, (spec.hidden,)),
        }
        assert set(dims) == set(GROUPS)
        bank = AdapterBank(spec.n_layers, dims, max_adapters, compute, self._device)
        engine = GemmaEngine(weights, cache, bank)
        self._sched = Scheduler(engine, tokenizer, self.eos_ids, speculate=speculate)
        self.model = None  # the fused weights replace it; the layers' memory is freed

    def _setup(self, tokenizer: Any, name: str, quantize: Quantize, device: torch.device) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.quantize = quantize
        self.backend = "native"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._adapters: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._sched = None
        self._device = device

    @classmethod
    def load_llamacpp(
        cls, name_or_path: str = "default", max_seq_len: int | None = DEFAULT_MAX_SEQ_LEN
    ) -> Generator:
        """A GGUF model (``default``: the Q4_K_M file the default model ships as) run by
        llama.cpp (:mod:`ragtune.generate.llamacpp`); needs ``llama-cpp-python``."""
        import torch

        from ragtune.generate import llamacpp

        path = llamacpp.gguf_path(name_or_path)
        tokenizer = llamacpp.hf_tokenizer(name_or_path, path)
        n_ctx = max_seq_len or DEFAULT_MAX_SEQ_LEN
        llm = llamacpp.load_llama(path, n_ctx)
        llamacpp.check_same_vocab(llm, tokenizer)
        self = cls.__new__(cls)
        self._setup(tokenizer, str(path), "none", torch.device("cpu"))
        self.backend = "llamacpp"
        self.model = None
        self._max_context = min(n_ctx, int(llm.n_ctx()))
        end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        eos = {tokenizer.eos_token_id, int(llm.token_eos()), end_of_turn}
        self.eos_ids = {int(e) for e in eos if e is not None and e != tokenizer.unk_token_id}
        self._sched = llamacpp.LlamaCppScheduler(llm, tokenizer, self.eos_ids, self._max_context)
        return self

    @classmethod
    def load(
        cls,
        name_or_path: str = "default",
        device: str = "auto",
        dtype: str = "auto",
        *,
        quantize: Quantize = "none",
        slots: int = DEFAULT_SLOTS,
        max_seq_len: int | None = DEFAULT_MAX_SEQ_LEN,
        max_adapters: int = DEFAULT_MAX_ADAPTERS,
        backend: Backend = "native",
        speculate: int = 0,
    ) -> Generator:
        """``backend="llamacpp"`` runs a GGUF model with llama.cpp instead (see
        :meth:`load_llamacpp`; CPU, no int8 or adapters); ``"transformers"`` decodes with
        transformers' own model (greedy batches only, see :meth:`__init__`)."""
        if backend == "llamacpp":
            if speculate:
                raise RagtuneError(
                    "The llama.cpp backend does not draft tokens (--speculate)",
                    "drop --speculate, or use the native backend",
                )
            check_llamacpp(quantize, device, installed=False)  # load_llama says if it is not
            return cls.load_llamacpp(name_or_path, max_seq_len)
        if backend not in ("native", "transformers"):
            raise RagtuneError(
                f"Unknown generation backend {backend!r}", "use native, transformers or llamacpp"
            )
        from ragtune.generate.quant import int8_gemm_available
        from ragtune.models import load_lm, resolve_lm

        if quantize == "int8" and dtype == "auto" and int8_gemm_available():
            # the int8 GEMM's speed does not depend on the activations' dtype: keep them
            # (and the weights it quantizes) in fp32, its answers closest to fp32's
            dtype = "float32"
        model, tokenizer = load_lm(name_or_path, device=device, dtype=dtype)
        return cls(
            model,
            tokenizer,
            name=str(resolve_lm(name_or_path)),
            quantize=quantize,
            slots=slots,
            max_seq_len=max_seq_len,
            max_adapters=max_adapters,
            speculate=speculate,
            backend=backend,
        )

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def max_context(self) -> int:
        return self._max_context

    @property
    def native(self) -> bool:
        """True when ragtune's own engine runs this model (else transformers does)."""
        return self._sched is not None

    @property
    def scheduler(self) -> Scheduler:
        if self._sched is None and self.model is not None and _is_gemma(self.model):
            raise RagtuneError(
                "The transformers backend decodes greedy batches only (no streaming, "
                "sampling or LoRA adapters)",
                "use the native backend for this",
            )
        if self._sched is None:
            raise RagtuneError(
                f"{self.name}: streaming, sampling and adapters need a Gemma 3 model",
                "use a Gemma 3 base or a model fine-tuned from one",
            )
        return self._sched

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        return list(prompt)

    def _check_fits(self, n_prompt: int, max_tokens: int, what: str = "Prompt") -> None:
        if n_prompt < 1:
            raise RagtuneError("The prompt is empty", "pass some text")
        if n_prompt + max_tokens > self.max_context:
            raise RagtuneError(
                f"{what} has {n_prompt} tokens; with {max_tokens} new tokens it "
                f"exceeds the model's context of {self.max_context}",
                "retrieve fewer or shorter passages (-k, --context-tokens)",
            )

    # -- the request API ----------------------------------------------------------------
    def submit(
        self,
        prompt: str | list[int],
        params: SamplingParams,
        adapter: str | None = None,
        *,
        on_done: Callable[[], None] | None = None,
    ) -> RequestHandle:
        """Queue one request (thread-safe); it is batched with whatever else is running.
        ``on_done`` is called from the scheduler thread when it finishes or fails."""
        import torch

        from ragtune.generate.sampling import Detokenizer
        from ragtune.generate.scheduler import Request

        sched = self.scheduler
        if params.max_tokens < 1:
            raise RagtuneError("max_tokens must be at least 1")
        if params.temperature < 0 or not 0 < params.top_p <= 1:
            raise RagtuneError("temperature must be >= 0 and top_p in (0, 1]")
        ids = self._encode(prompt)
        self._check_fits(len(ids), params.max_tokens)
        path = None
        if adapter is not None:
            with self._lock:
                path = self._adapters.get(adapter)
            if path is None:
                raise RagtuneError(
                    f"No adapter named {adapter!r}", "register it with add_adapter(name, path)"
                )
        rng = None
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8))
            rng = torch.Generator().manual_seed(seed % (1 << 63))
        req = Request(
            ids=ids,
            params=params,
            adapter=adapter,
            adapter_path=path,
            detok=Detokenizer(self.tokenizer, params.stop),
            rng=rng,
            on_done=on_done,
        )
        return sched.submit(req)

    def add_adapter(self, name: str, path: str | os.PathLike[str]) -> None:
        """Register a LoRA adapter (a ``ragtune tune --method lora`` run folder or a PEFT
        folder); it loads on first use."""
        from ragtune.generate.lora import resolve_adapter

        self.scheduler  # noqa: B018  (raises when the model has no native engine)
        if self.backend != "native":
            raise RagtuneError(
                "The llama.cpp backend serves no LoRA adapters",
                "use the native backend, or load `ragtune export RUN --format gguf --adapter` "
                "output in llama.cpp",
            )
        folder = resolve_adapter(path)
        with self._lock:
            old = self._adapters.get(name)
            self._adapters[name] = folder
        if old is not None and old != folder:
            self._evict(name)

    def remove_adapter(self, name: str) -> None:
        with self._lock:
            if self._adapters.pop(name, None) is None:
                raise RagtuneError(f"No adapter named {name!r}")
        self._evict(name)

    def _evict(self, name: str) -> None:
        sched = self.scheduler
        with sched.cond:
            sched.evictions.append(name)
            sched.cond.notify()

    @property
    def adapters(self) -> list[str]:
        with self._lock:
            return sorted(self._adapters)

    def close(self) -> None:
        if self._sched is not None:
            self._sched.close()

    # -- the batch API (ask, compare, make-qa) ---------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        stop: Sequence[str] = STOP_STRINGS,
        batch_size: int = 16,
        progress: Callable[[int], None] | None = None,
        adapter: str | None = None,
    ) -> list[Generation]:
        """Greedy continuations of ``prompts``, in order; at most ``batch_size`` run at
        once (and at most the engine's slots). ``progress(1)`` as each one finishes."""
        if max_new_tokens < 1 or batch_size < 1:
            raise RagtuneError("max_new_tokens and batch_size must be at least 1")
        encoded = [self._encode(p) for p in prompts]
        for i, ids in enumerate(encoded):
            self._check_fits(len(ids), max_new_tokens, f"Prompt {i}")
        if self._sched is None:
            return self._generate_hf(encoded, max_new_tokens, stop, batch_size, progress)
        params = SamplingParams(max_tokens=max_new_tokens, stop=tuple(s for s in stop if s))
        finished: queue.SimpleQueue[int] = queue.SimpleQueue()
        handles: list[RequestHandle] = []
        done = 0
        try:
            while done < len(encoded):
                while len(handles) < len(encoded) and len(handles) - done < batch_size:
                    i = len(handles)
                    handles.append(
                        self.submit(encoded[i], params, adapter, on_done=lambda: finished.put(0))
                    )
                finished.get()
                done += 1
                if progress is not None:
                    progress(1)
        finally:
            for h in handles[done:]:
                h.cancel()
        out = []
        for ids, h in zip(encoded, handles, strict=True):
            c = h.result()
            out.append(
                Generation(
                    text=c.text.strip(),
                    prompt_tokens=len(ids),
                    new_tokens=c.completion_tokens,
                    finish=h.finish,
                    seconds=h.seconds,
                )
            )
        return out

    def _generate_hf(
        self,
        encoded: list[list[int]],
        max_new_tokens: int,
        stop: Sequence[str],
        batch_size: int,
        progress: Callable[[int], None] | None,
    ) -> list[Generation]:
        from ragtune.generate.hf_fallback import generate_batch_hf

        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[Generation | None] = [None] * len(encoded)
        with self._lock:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = [encoded[i] for i in idx]
                outs = generate_batch_hf(self.model, self.tokenizer, batch, max_new_tokens, stop)
                for i, out in zip(idx, outs, strict=True):
                    results[i] = out
                if progress is not None:
                    progress(len(idx))
        return [r for r in results if r is not None]
