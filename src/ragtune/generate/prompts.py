"""Prompt layouts shared by training and inference.

A model is trained and asked in the *same* layout, so that what fine-tuning teaches
is what the question prompt triggers:

* Models whose tokenizer has a chat template (instruction-tuned folders) use it.
* Pretrained base models (the default Gemma 3 270M) use a plain layout that such
  models already continue well::

      {system}

      Question: {user}
      Answer: {assistant}<eos>

  An assistant message with no user message before it is raw text (continued
  pre-training on documents), rendered as-is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from ragtune.types import Hit, Message

QUESTION = "Question:"
ANSWER = "Answer:"
TURN_SEP = "\n\n"
# Where a plain-layout answer ends when the model does not emit EOS itself.
STOP_STRINGS = ("\nQuestion:", "\n\n")


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat_segments(messages: Sequence[Message], tokenizer: Any) -> list[tuple[str, bool]]:
    """Render a conversation as ``(text, trained)`` pieces whose concatenation is the full text.

    ``trained`` is True exactly for assistant turns with weight 1 (their text and the end
    of turn marker). Tokenizing the pieces separately and concatenating gives the training
    sequence; the prompt pieces end where generation would start.
    """
    if has_chat_template(tokenizer):
        return _chat_template_segments(messages, tokenizer)
    eos = tokenizer.eos_token or ""
    pieces: list[tuple[str, bool]] = []
    prev_user = False
    for i, m in enumerate(messages):
        sep = TURN_SEP if i > 0 else ""
        if m.role == "system":
            pieces.append((f"{sep}{m.content}", False))
            prev_user = False
        elif m.role == "user":
            pieces.append((f"{sep}{QUESTION} {m.content}\n{ANSWER}", False))
            prev_user = True
        elif prev_user:  # an answer: the prompt already ends with "Answer:"
            pieces.append((f" {m.content}{eos}", m.weight == 1))
            prev_user = False
        else:  # raw text with no question before it
            if sep:
                pieces.append((sep, False))
            pieces.append((f"{m.content}{eos}", m.weight == 1))
    return pieces


def _chat_template_segments(messages: Sequence[Message], tokenizer: Any) -> list[tuple[str, bool]]:
    """Split the chat template's rendering at message boundaries by rendering prefixes."""
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m.role == "assistant":
            prompt = tokenizer.apply_chat_template(
                dicts[:i], tokenize=False, add_generation_prompt=True
            )
            if prompt.startswith(done) and len(prompt) > len(done):
                pieces.append((prompt[len(done) :], False))
                done = prompt
        full = tokenizer.apply_chat_template(dicts[: i + 1], tokenize=False)
        if not full.startswith(done):
            raise ValueError("chat template does not render conversations as growing prefixes")
        pieces.append((full[len(done) :], m.role == "assistant" and m.weight == 1))
        done = full
    return [(t, trained) for t, trained in pieces if t]


def chat_prompt(messages: Sequence[Message], tokenizer: Any) -> str:
    """The text after which the model should write the next assistant turn."""
    if has_chat_template(tokenizer):
        dicts = [{"role": m.role, "content": m.content} for m in messages]
        return str(tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True))
    text = "".join(t for t, _ in render_chat_segments(messages, tokenizer))
    if messages and messages[-1].role != "user":
        text += f"{TURN_SEP}{QUESTION}"
    return text


# --- RAG prompts and citations ---------------------------------------------------------

RAG_INSTRUCTION = (
    "Answer the question with a short answer taken from the sources below. "
    "After the answer, write the number of the source you used in brackets, like [1]."
)
# Shown before a RAG question as earlier turns: a pretrained model copies their form
# (a short answer, then a source number). Measured on the demo world with Gemma 3 270M:
# token F1 0.46 without them, 0.77 with them (bench/RESULTS.md).
RAG_FEWSHOT = (
    ("At what temperature does water boil at sea level?", "100 degrees Celsius [2]"),
    ("Who wrote the novel Dracula?", "Bram Stoker [1]"),
)
CITATION = re.compile(r"\[(\d{1,3})\]")


def format_source(marker: int, hit: Hit) -> str:
    title = f" {hit.chunk.title}" if hit.chunk.title else ""
    return f"[{marker}]{title}\n{hit.chunk.text.strip()}"


def pack_sources(
    hits: Sequence[Hit], count_tokens: Callable[[str], int], budget: int
) -> list[tuple[Hit, str]]:
    """Number the hits in rank order and keep as many as fit in ``budget`` tokens.

    A hit that does not fit is left out (a later, shorter one may still fit); if not even
    the first fits, its text is cut to the budget so the prompt is never empty.
    """
    packed: list[tuple[Hit, str]] = []
    used = 0
    for hit in hits:
        block = format_source(len(packed) + 1, hit)
        n = count_tokens(block)
        if used + n <= budget:
            packed.append((hit, block))
            used += n
    if not packed and hits:
        block = format_source(1, hits[0])
        ratio = budget / max(1, count_tokens(block))
        packed.append((hits[0], block[: max(1, int(len(block) * ratio * 0.95))]))
    return packed


def rag_messages(
    question: str, sources: Sequence[str], instruction: str = RAG_INSTRUCTION
) -> list[Message]:
    """The conversation for a RAG question: instruction and numbered sources, then the question."""
    context = instruction + "\n\n" + "\n\n".join(sources) if sources else instruction
    return [Message("system", context), Message("user", question)]


def parse_citations(text: str, n_sources: int) -> list[int]:
    """Source numbers cited as ``[n]`` in ``text`` (valid ones, first-seen order, no repeats)."""
    seen: list[int] = []
    for m in CITATION.finditer(text):
        n = int(m.group(1))
        if 1 <= n <= n_sources and n not in seen:
            seen.append(n)
    return seen


def strip_citations(text: str) -> str:
    """The answer without its ``[n]`` markers (for scoring against gold answers)."""
    return re.sub(r"\s+", " ", CITATION.sub("", text)).strip()
