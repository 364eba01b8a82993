"""Continuous batching (Orca, Yu et al. OSDI 2022): one thread owns the model and the
KV cache; requests arrive from any thread; each iteration admits waiting requests into
free cache slots (prefilling their prompts), then decodes one token for every running
request together. A request that finishes frees its slot for the next one at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ragtune.errors import RagtuneError
from ragtune.generate.gemma import Batch, GemmaEngine
from ragtune.generate.sampling import (
    Completion,
    Detokenizer,
    SamplingParams,
    TokenDelta,
    argmax_rows,
    sample_token,
)
from ragtune.generate.threads import release_idle_openmp_threads

log = logging.getLogger(__name__)

Finish = Literal["stop", "eos", "length"]
# prompt tokens prefilled in one pass at most (bounds the activations' memory)
PREFILL_TOKENS = 8192


@dataclass(eq=False)
class Request:
    ids: list[int]
    params: SamplingParams
    adapter: str | None
    adapter_path: Path | None
    detok: Detokenizer
    rng: torch.Generator | None
    on_done: Callable[[], None] | None = None
    deltas: queue.SimpleQueue[TokenDelta | None] = field(default_factory=queue.SimpleQueue)
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    slot: int = -1
    lora_slot: int = -1
    pos: int = 0  # position at which ``last`` is fed
    last: int = 0  # the token to feed next
    tokens: list[int] = field(default_factory=list)
    logprobs: list[tuple[str, float]] = field(default_factory=list)
    finish: Finish = "length"
    completion: Completion | None = None
    error: BaseException | None = None
    started: float = 0.0
    seconds: float = 0.0


class RequestHandle:
    """A submitted request: iterate for streamed deltas, or wait for :meth:`result`."""

    def __init__(self, req: Request, scheduler: Scheduler) -> None:
        self._req, self._sched = req, scheduler

    def __iter__(self) -> Iterator[TokenDelta]:
        while True:
            item = self._req.deltas.get()
            if item is None:
                break
            yield item
        if self._req.error is not None:
            raise self._req.error

    def result(self, timeout: float | None = None) -> Completion:
        if not self._req.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self._req.error is not None:
            raise self._req.error
        assert self._req.completion is not None
        return self._req.completion

    def cancel(self) -> None:
        self._req.cancelled = True
        self._sched.wake()

    # for Generator.generate
    @property
    def finish(self) -> Finish:
        return self._req.finish

    @property
    def seconds(self) -> float:
        return self._req.seconds


# Rows one decode step may feed in all, drafts included. Verifying drafts pays while a
# step is bound by reading the weights (then a few more rows cost little); a batch of
# running requests already fills that, and drafts beyond it would cost compute instead.
DRAFT_ROWS = 8


def draft_length(speculate: int, running: int) -> int:
    """Draft tokens per request this step: ``speculate``, cut so that ``running``
    requests and their drafts stay within :data:`DRAFT_ROWS` rows (0 past that)."""
    return max(0, min(speculate, DRAFT_ROWS // max(running, 1) - 1))


class Scheduler:
    """Continuous batching over ragtune's own engine (:class:`GemmaEngine`). Subclasses
    with another forward override :meth:`_prefill_many` and :meth:`_decode`."""

    def __init__(
        self, engine: GemmaEngine, tokenizer: Any, eos_ids: set[int], speculate: int = 0
    ) -> None:
        """``speculate``: draft up to this many tokens per greedy request and step by
        prompt lookup (:func:`prompt_lookup`); the cache needs that much ring slack."""
        self.engine = engine
        self._setup(tokenizer, eos_ids, engine.cache.slots, engine.cache.max_len, engine.w.device)
        if speculate and engine.cache.ring < min(engine.spec.window + speculate, self.max_len):
            raise ValueError("speculative decoding needs a KV cache with ring slack >= speculate")
        self.speculate = speculate

    def _setup(self, tokenizer: Any, eos_ids: set[int], n_slots: int, max_len: int,
               device: torch.device) -> None:  # fmt: skip
        self.tok, self.eos = tokenizer, eos_ids
        self.n_slots, self.max_len, self.device = n_slots, max_len, device
        self.cond = threading.Condition()
        self.waiting: deque[Request] = deque()
        self.running: list[Request | None] = [None] * self.n_slots
        self.closed = False
        self.evictions: list[str] = []  # adapter names to evict (by the scheduler thread)
        self.thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and benchmarks)
        self.speculate = 0
        self.drafted = 0  # draft tokens proposed and accepted (speculative decoding)
        self.accepted = 0

    def submit(self, req: Request) -> RequestHandle:
        # the caller now waits for this thread's results: its idle OpenMP team would only
        # slow the scheduler's own (see ragtune.generate.threads)
        if threading.current_thread() is not self.thread:
            release_idle_openmp_threads()
        with self.cond:
            if self.closed:
                raise RagtuneError("The generator is closed", "load a new Generator")
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="ragtune-gen", daemon=True)
                self.thread.start()
            self.waiting.append(req)
            self.cond.notify()
        return RequestHandle(req, self)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()

    # -- the loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cond:
                if not self.closed and not self.waiting and not any(self.running):
                    # idle: release this thread's OpenMP team, so that another engine's
                    # (or the caller's) runs unthrottled meanwhile
                    release_idle_openmp_threads()
                while not self.closed and not self.waiting and not any(self.running):
                    self.cond.wait()
                if self.closed:
                    pending = [*self.waiting, *(r for r in self.running if r)]
                    self.waiting.clear()
                    for r in pending:
                        self._fail(r, RagtuneError("The generator was closed"))
                    return
                admitted = self._take_waiting()
            try:
                for name in self._drain_evictions():
                    self.engine.bank.evict(name)
                self._admit(admitted)
                for run in self.running:
                    if run is not None and run.cancelled:
                        self._end(run, "stop")
                if any(self.running):
                    with torch.inference_mode():
                        self._step()
            except Exception as e:  # a bug or OOM: fail what is running, keep serving
                log.exception("generation step failed")
                for failed in [*admitted, *self.running]:
                    if failed is not None and not failed.done.is_set():
                        self._fail(failed, e)

    def _drain_evictions(self) -> list[str]:
        with self.cond:
            names, self.evictions = self.evictions, []
        return names

    def _take_waiting(self) -> list[Request]:
        """Waiting requests for the free slots, FIFO (called with the lock held)."""
        free = sum(r is None for r in self.running)
        out: list[Request] = []
        while self.waiting and len(out) < free:
            out.append(self.waiting.popleft())
        return out

    def _admit(self, reqs: list[Request]) -> None:
        """Give waiting requests a slot (and their adapter a bank slot), then prefill them
        together, up to ``PREFILL_TOKENS`` prompt tokens per pass."""
        ready: list[Request] = []
        for req in reqs:
            if req.cancelled:
                req.completion = self._completion(req)
                self._close_request(req)
                continue
            try:
                if req.adapter is not None:
                    assert req.adapter_path is not None
                    lora = self.engine.bank.acquire(req.adapter, req.adapter_path)
                    if lora is None:  # every adapter slot is busy: wait for one
                        with self.cond:
                            self.waiting.appendleft(req)
                        continue
                    req.lora_slot = lora
            except Exception as e:
                self._fail(req, e)
                continue
            req.slot = self.running.index(None)
            self.running[req.slot] = req
            req.started = time.perf_counter()
            ready.append(req)
        while ready:
            group = [ready.pop(0)]
            size = len(group[0].ids)
            while ready and size + len(ready[0].ids) <= PREFILL_TOKENS:
                size += len(ready[0].ids)
                group.append(ready.pop(0))
            with torch.inference_mode():
                logits = self._prefill_many(group)
            for req, row in zip(group, logits, strict=True):
                req.pos = len(req.ids) - 1  # the last fed position; _accept moves it on
                self._accept(req, row, None)

    def _prefill_many(self, reqs: list[Request]) -> torch.Tensor:
        """Run the requests' prompts into their cache slots; (n, V) logits after each (in
        the engine's dtype: :meth:`_accept` widens a row to fp32 only where it needs)."""
        prompts = [torch.tensor(r.ids, device=self.device) for r in reqs]
        h = self.engine.prefill_many(prompts, [r.slot for r in reqs], [r.lora_slot for r in reqs])
        return self.engine.logits(h)

    def _step(self) -> None:
        reqs = [r for r in self.running if r is not None]
        k = draft_length(self.speculate, len(reqs))
        drafts = [self._draft(r, k) for r in reqs]
        rows = [(r, [r.last, *d]) for r, d in zip(reqs, drafts, strict=True)]
        logits = self._decode(rows)
        greedy = argmax_rows(logits).tolist()
        self.steps += 1
        j = 0
        for r, draft in zip(reqs, drafts, strict=True):
            # speculative decoding's greedy rule (Leviathan et al. 2023): row i's logits
            # are valid while every draft token before it equals the token chosen there
            for i in range(len(draft) + 1):
                self._accept(r, logits[j + i], greedy[j + i])
                if r.slot < 0 or i == len(draft) or greedy[j + i] != draft[i]:
                    break
                self.accepted += 1
            j += len(draft) + 1

    def _draft(self, req: Request, most: int) -> list[int]:
        """Up to ``most`` draft tokens to verify after ``req.last`` (greedy requests only):
        prompt lookup, cut so the request cannot pass ``max_tokens`` or the cache."""
        p = req.params
        k = min(most, p.max_tokens - len(req.tokens) - 1, self.max_len - 2 - req.pos)
        if k <= 0 or p.temperature > 0.0:
            return []
        draft = prompt_lookup([*req.ids, *req.tokens], k)
        self.drafted += len(draft)
        return draft

    def _decode(self, rows: list[tuple[Request, list[int]]]) -> torch.Tensor:
        """Feed every running request its next token (and its draft tokens after it, at
        the following positions); (rows, V) logits, one row per token fed (in the
        engine's dtype, as :meth:`_prefill_many`)."""
        dev = self.device
        slots = [r.slot for r, fed in rows for _ in fed]
        lora = [r.lora_slot for r, fed in rows for _ in fed]
        batch = Batch(
            slots=torch.tensor(slots, device=dev),
            positions=torch.tensor(
                [r.pos + i for r, fed in rows for i in range(len(fed))], device=dev
            ),
            lora_rows=torch.tensor(lora, device=dev) if max(lora) >= 0 else None,
            contiguous=slots == list(range(len(slots))),
            shared_slot=slots[0] if len(set(slots)) == 1 else -1,
        )
        tokens = torch.tensor([t for _, fed in rows for t in fed], device=dev)
        return self.engine.logits(self.engine.decode(tokens, batch))

    def _accept(self, req: Request, logits: torch.Tensor, greedy: int | None) -> None:
        """Choose the next token of ``req`` from its (V,) logits and stream it (``greedy``:
        the logits' argmax when the caller has it; sampling and logprobs work in fp32)."""
        p = req.params
        if p.temperature <= 0.0 and greedy is not None:
            token = greedy
        else:
            token = sample_token(logits, p, req.rng)
        lp: float | None = None
        piece = ""
        top: tuple[tuple[str, float], ...] = ()
        if p.logprobs:
            logp = torch.log_softmax(logits.float(), -1)
            lp, piece = float(logp[token].item()), str(self.tok.decode([token]))
            if p.top_logprobs > 0:
                values, idx = logp.topk(p.top_logprobs)
                top = tuple(
                    (str(self.tok.decode([i])), v)
                    for v, i in zip(values.tolist(), idx.tolist(), strict=True)
                )
        if token in self.eos:
            self._send(req, TokenDelta(req.detok.finish(), token, lp, piece, top))
            self._end(req, "eos")
            return
        req.tokens.append(token)
        if lp is not None:
            req.logprobs.append((piece, lp))
        text = req.detok.add(token)
        finish: Finish | None = None
        if req.detok.stopped:
            finish = "stop"
        elif len(req.tokens) >= p.max_tokens or req.pos + 1 >= self.max_len:
            finish = "length"
        if finish is not None:
            text += req.detok.finish()
        self._send(req, TokenDelta(text, token, lp, piece, top))
        if finish is not None:
            self._end(req, finish)
        else:
            req.last = token
            req.pos += 1

    def _send(self, req: Request, delta: TokenDelta) -> None:
        req.deltas.put(delta)

    def _completion(self, req: Request) -> Completion:
        return Completion(
            text=req.detok.text,
            prompt_tokens=len(req.ids),
            completion_tokens=len(req.tokens),
            finish_reason="length" if req.finish == "length" else "stop",
            token_logprobs=list(req.logprobs) if req.params.logprobs else None,
        )

    def _end(self, req: Request, finish: Finish) -> None:
        req.finish = finish
        req.seconds = time.perf_counter() - req.started
        self._release(req)
        req.completion = self._completion(req)
        self._close_request(req)

    def _release(self, req: Request) -> None:
        if req.slot >= 0:
            self.running[req.slot] = None
            req.slot = -1
        if req.lora_slot >= 0:
            self.engine.bank.release(req.lora_slot)
            req.lora_slot = -1

    def _fail(self, req: Request, error: BaseException) -> None:
        self._release(req)
        req.error = error
        self._close_request(req)

    def _close_request(self, req: Request) -> None:
        req.deltas.put(None)
        req.done.set()
        if req.on_done is not None:
            req.on_done()


def prompt_lookup(context: list[int], k: int, max_ngram: int = 3) -> list[int]:
    """Prompt-lookup drafting (Saxena 2023, "Prompt Lookup Decoding"): find the most recent
    earlier occurrence of the context's last ``n`` tokens (n = max_ngram down to 1) and
    propose the (up to) ``k`` tokens that followed it. RAG answers copy spans of their
    sources, so such drafts are often right; [] when nothing matches."""
    size = len(context)
    for n in range(min(max_ngram, size - 1), 0, -1):
        tail = context[size - n :]
        for start in range(size - n - 1, -1, -1):
            if context[start : start + n] == tail:
                return context[start + n : start + n + k]
    return []
