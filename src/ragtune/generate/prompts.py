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

from collections.abc import Sequence
from typing import Any

from ragtune.types import Message

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
