"""Sampling parameters, streamed deltas and finished completions, and the pure functions
that pick a token and turn token ids into text incrementally."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # reproducible per request when set
    stop: tuple[str, ...] = ()  # stop strings; output is cut before the first one
    logprobs: bool = False  # log-probability of each chosen token
    top_logprobs: int = 0  # with logprobs: the most likely alternatives per position


@dataclass(frozen=True)
class TokenDelta:
    """One streamed piece of a request's output."""

    text: str  # new text since the previous delta (may be "")
    token_id: int
    logprob: float | None
    token: str = ""  # the token's own text (with logprobs)
    top: tuple[tuple[str, float], ...] = ()  # (token text, logprob), top_logprobs of them


@dataclass(frozen=True)
class Completion:
    """A finished request."""

    text: str  # the whole output, cut before the stop string (not stripped)
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]  # "stop" for EOS or a stop string
    token_logprobs: list[tuple[str, float]] | None  # (token text, logprob) when asked


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2019, arXiv:1904.09751): keep the smallest set of
    most likely tokens whose probability reaches ``top_p``, renormalised. probs: (V,)."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(descending=True)
    keep = (sorted_p.cumsum(0) - sorted_p) < top_p  # the token that crosses top_p stays
    sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
    out = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return out / out.sum()


# Block of the vocabulary that :func:`argmax_rows` reduces at once (a power of two divides
# every large vocabulary in use; 1024-4096 measured equally fast for 262,144 logits).
ARGMAX_BLOCK = 1024


def argmax_rows(logits: torch.Tensor, block: int = ARGMAX_BLOCK) -> torch.Tensor:
    """``logits.argmax(-1)`` for (..., V) logits, the very same indices (the first maximal
    one per row; a NaN counts as the maximum, as torch's argmax has it), found in two
    passes: the maximum of every ``block`` of a row (torch's ``amax`` is vectorized), then
    the first block holding the row's maximum (or a NaN), then torch's argmax inside that
    block only. torch's argmax over a long row is a scalar loop, several times slower than
    this for a batch of 262,144-token rows, most of all in bf16. Vocabularies that are not
    a multiple of ``block`` take torch's argmax."""
    V = logits.shape[-1]
    if V % block or V // block < 2:
        return logits.argmax(-1)
    lead = logits.shape[:-1]
    blocks = logits.reshape(-1, V // block, block)  # (B, C, block)
    peak = blocks.amax(-1)  # (B, C)
    top = peak.amax(-1, keepdim=True)  # (B, 1); NaN when the row holds one
    first = ((peak == top) | peak.isnan()).to(torch.uint8).argmax(-1)  # (B,) first such block
    rows = torch.arange(blocks.shape[0], device=logits.device)
    return (first * block + blocks[rows, first].argmax(-1)).reshape(lead)


def sample_token(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
    """One token from (V,) logits: argmax when temperature is 0, else a draw from
    softmax(logits / T) (in fp32) restricted to the top-p nucleus."""
    if params.temperature <= 0.0:
        return int(argmax_rows(logits).item())
    # on the CPU: a request's generator is a CPU one (also when the model runs on a GPU)
    probs = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)
    probs = top_p_filter(probs, params.top_p)
    return int(torch.multinomial(probs, 1, generator=gen).item())


def first_stop(text: str, stops: Sequence[str], start: int = 0) -> int:
    """Index of the earliest stop string in ``text`` found at or after ``start``, or -1."""
    return min((i for s in stops if s and (i := text.find(s, start)) >= 0), default=-1)


class Detokenizer:
    """Token ids -> text, incrementally (the prefix/read offset scheme of TGI and vLLM):
    decode a short window around the new tokens and emit the text past the window's known
    prefix, holding back while the tail is an incomplete UTF-8 character. Stop strings are
    searched in the new text, and text that might be the start of a stop string is held
    back, so a stream never shows text that the final answer cuts."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.tok = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # decoded so far
        self.sent = 0  # characters of ``text`` already streamed
        self.prefix_offset = 0
        self.read_offset = 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=True))

    def add(self, token_id: int) -> str:
        """Append a token; return the text that may be streamed now."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            before = len(self.text)
            self.text += full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            if self.stops:
                cut = first_stop(self.text, self.stops, max(0, before - self.hold))
                if cut >= 0:
                    self.text, self.stopped = self.text[:cut], True
        end = len(self.text) if self.stopped else max(self.sent, len(self.text) - self.hold)
        return self._emit(end)

    def finish(self) -> str:
        """The remaining text at the end of a request (including an incomplete character
        that :meth:`add` held back)."""
        if not self.stopped and self.read_offset < len(self.ids):
            prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
            full = self._decode(self.ids[self.prefix_offset :])
            before = len(self.text)
            self.text += full[len(prefix) :]
            cut = first_stop(self.text, self.stops, max(0, before - self.hold))
            if cut >= 0:
                self.text, self.stopped = self.text[:cut], True
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        out = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return out
