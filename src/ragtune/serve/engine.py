"""The one module between the API routes and the generation engine.

The routes call exactly this surface: :meth:`Engine.submit` (a prompt, :class:`SamplingParams`,
a model name) returning a :class:`RequestHandle` that streams :class:`TokenDelta` and ends in
a :class:`Completion`; :meth:`Engine.add_model` to make a fine-tuned run servable;
``count_tokens`` and ``tokenizer``. The names follow the generator contract
(``/work/wt/GENERATOR_CONTRACT.md``: ``Generator.submit(prompt, params, adapter)`` and
``add_adapter``).

Today it runs on the existing :class:`ragtune.generate.engine.Generator` (which only decodes
greedily in batches): each request is decoded here, one at a time per model, by a small
sampling loop with a KV cache (temperature, top-p, a per-request seed, log-probabilities,
streaming). A fine-tuned run is served from its merged weights as its own model, kept in a
small LRU. Swapping onto the contract: ``submit`` becomes
``self._base.submit(prompt, params, adapter=name)`` and ``add_model`` becomes
``self._base.add_adapter(name, run_dir)`` (full fine-tunes stay separate generators).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragtune.errors import RagtuneError
from ragtune.generate.engine import Generator, cut_at_stop

MAX_LOADED = 4  # fine-tuned models kept in memory at once (least recently used evicted)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0  # ragtune extension of the contract: alternatives per position


@dataclass(frozen=True)
class TokenDelta:
    text: str  # new text since the previous delta (may be "")
    token_id: int
    logprob: float | None
    token: str = ""  # the token's own text
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str  # the whole output, cut before the stop string (not stripped)
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    token_logprobs: list[TokenDelta] | None = None


@dataclass
class RequestHandle:
    """Decodes lazily in the thread that iterates it (a server thread, not the event loop)."""

    _run: Iterator[TokenDelta]
    _done: list[Completion] = field(default_factory=list)

    def __iter__(self) -> Iterator[TokenDelta]:
        return self._run

    def result(self) -> Completion:
        for _ in self._run:
            pass
        return self._done[0]


class _Model:
    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.lock = threading.Lock()


class Engine:
    def __init__(self, base: str = "default", device: str = "auto") -> None:
        self.base_path = base
        self.device = device
        self._base: _Model | None = None
        self._paths: dict[str, Path] = {}  # name -> run folder or checkpoint file
        self._loaded: OrderedDict[str, _Model] = OrderedDict()
        self._lock = threading.Lock()

    def load(self) -> Engine:
        if self._base is None:
            self._base = _Model(Generator.load(self.base_path, device=self.device, dtype="float32"))
        return self

    @property
    def tokenizer(self) -> Any:
        return self.load()._model(None).generator.tokenizer

    def count_tokens(self, text: str) -> int:
        return self.load()._model(None).generator.count_tokens(text)

    def add_model(self, name: str, path: Path) -> None:
        """Make a fine-tuned model servable under ``name``: a run folder, or a checkpoint
        file ``RUN/checkpoints/step-N.pt`` of a run."""
        with self._lock:
            self._paths[name] = Path(path)

    def remove_model(self, name: str) -> None:
        with self._lock:
            self._paths.pop(name, None)
            self._loaded.pop(name, None)

    def submit(
        self, prompt: str, params: SamplingParams, model: str | None = None
    ) -> RequestHandle:
        """Decode ``prompt`` with ``model`` (None: the base). Raises RagtuneError when the
        prompt plus ``max_tokens`` does not fit the context."""
        m = self.load()._model(model)
        ids = list(m.generator.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if len(ids) + params.max_tokens > m.generator.max_context:
            raise RagtuneError(
                f"The prompt has {len(ids)} tokens; with max_tokens {params.max_tokens} it "
                f"exceeds the model's context of {m.generator.max_context}",
                "shorten the messages or lower max_tokens",
            )
        done: list[Completion] = []
        return RequestHandle(_decode(m, ids, params, done), done)

    def _model(self, name: str | None) -> _Model:
        if name is None:
            assert self._base is not None
            return self._base
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            path = self._paths.get(name)
            if path is None:
                raise RagtuneError(f"The model {name} is not loaded")
            model = _Model(_load_finetuned(self.base_path, path, self.device))
            self._loaded[name] = model
            while len(self._loaded) > MAX_LOADED:
                self._loaded.popitem(last=False)
            return model


def _load_finetuned(base: str, path: Path, device: str) -> Generator:
    if path.is_dir():  # a finished run: its merged model
        return Generator.load(str(path), device=device, dtype="float32")
    return _load_checkpoint(base, path, device)


def _load_checkpoint(base: str, path: Path, device: str) -> Generator:
    """A run's checkpoint as a model: the base, the run's LoRA layers (if any), the trained
    parameters from the checkpoint, merged."""
    import torch

    from ragtune.models import load_lm, pick_device
    from ragtune.tune.checkpoint import load_checkpoint
    from ragtune.tune.events import read_manifest
    from ragtune.tune.lora import apply_lora

    run_dir = path.parent.parent
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise RagtuneError(f"{run_dir} is not a ragtune run")
    loaded, tokenizer = load_lm(base, device="cpu", dtype="float32")
    model: Any = loaded
    lora = manifest["hyperparameters"].get("lora")
    if lora:
        model = apply_lora(model, lora["rank"], lora["alpha"], lora["dropout"])
    state = load_checkpoint(path)["trainable"]
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    if lora:
        model = model.merge_and_unload()
    model.to(pick_device(device))
    model.eval()
    return Generator(model, tokenizer, name=str(path))


def _decode(
    m: _Model, ids: list[int], params: SamplingParams, done: list[Completion]
) -> Iterator[TokenDelta]:
    """Sample up to ``max_tokens`` tokens after ``ids``; yields text as it becomes final.

    Sampling: temperature scaling, then nucleus (top-p) filtering (Holtzman et al. 2020,
    arXiv:1904.09751): keep the smallest set of most likely tokens whose mass reaches p.
    Text that may be the start of a stop string is held back until it is not.
    """
    import torch
    from transformers import DynamicCache

    gen = m.generator
    tok = gen.tokenizer
    eos = tok.eos_token_id
    stops = [s for s in params.stop if s]
    rng = torch.Generator()
    if params.seed is not None:
        rng.manual_seed(params.seed)
    else:
        rng.seed()
    new: list[int] = []
    logged: list[TokenDelta] = []
    emitted = ""
    finish: Literal["stop", "length"] = "length"
    with m.lock, torch.inference_mode():
        dev = gen.device
        cache = DynamicCache(config=gen.model.config)
        out = gen.model(
            input_ids=torch.tensor([ids], device=dev),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        for _ in range(params.max_tokens):
            logits = out.logits[0, -1].float()  # (V,)
            logp = torch.log_softmax(logits, -1)
            token = _choose(logits, params, rng)
            if token == eos:
                finish = "stop"
                break
            new.append(token)
            text = tok.decode(new, skip_special_tokens=True)
            cut, hit = cut_at_stop(text, stops)
            delta = TokenDelta(
                text="",
                token_id=token,
                logprob=float(logp[token]) if params.logprobs else None,
                token=tok.decode([token], skip_special_tokens=True),
                top=_top(logp, params.top_logprobs, tok) if params.logprobs else (),
            )
            if hit:
                finish = "stop"
                piece = cut[len(emitted) :]
                emitted = cut
                logged.append(delta)
                yield _with_text(delta, piece)
                break
            ready = len(text) - _held_back(text, stops)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the rest
                ready = min(ready, len(text) - 1)
            piece = text[len(emitted) : ready] if ready > len(emitted) else ""
            emitted += piece
            logged.append(delta)
            yield _with_text(delta, piece)
            out = gen.model(
                input_ids=torch.tensor([[token]], device=dev), past_key_values=cache, use_cache=True
            )
        else:
            finish = "length"
    final, _ = cut_at_stop(tok.decode(new, skip_special_tokens=True), stops)
    if len(final) > len(emitted):
        yield TokenDelta(text=final[len(emitted) :], token_id=-1, logprob=None)
    done.append(
        Completion(
            text=final,
            prompt_tokens=len(ids),
            completion_tokens=len(new),
            finish_reason=finish,
            token_logprobs=logged if params.logprobs else None,
        )
    )


def _with_text(delta: TokenDelta, text: str) -> TokenDelta:
    return TokenDelta(text, delta.token_id, delta.logprob, delta.token, delta.top)


def _choose(logits: Any, params: SamplingParams, rng: Any) -> int:
    import torch

    if params.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / params.temperature, -1)  # (V,)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < params.top_p  # mass before each token < p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=rng))


def _top(logp: Any, k: int, tok: Any) -> tuple[tuple[str, float], ...]:
    if k <= 0:
        return ()
    values, idx = logp.topk(k)
    return tuple(
        (tok.decode([int(i)], skip_special_tokens=True), float(v))
        for v, i in zip(values, idx, strict=True)
    )


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
