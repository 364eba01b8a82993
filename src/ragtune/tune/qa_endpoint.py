"""make-qa's writer for any OpenAI-compatible ``/chat/completions`` endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.errors import RagtuneError
from ragtune.tune.makeqa import Candidate


@dataclass
class EndpointQAWriter:
    """Any OpenAI-compatible ``/chat/completions`` endpoint (including ragtune's own)."""

    url: str
    model: str
    api_key: str = ""
    timeout: float = 120.0

    def _chat(self, content: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": content}],
                "temperature": 0,
            }
        ).encode()
        request = urllib.request.Request(
            self.url.rstrip("/") + "/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}),
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                data: dict[str, Any] = json.loads(resp.read())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
            raise RagtuneError(
                f"The generator endpoint {self.url} failed: {e}",
                "check --generator-url (it should end in /v1) and --generator-model",
            ) from None
        try:
            return str(data["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise RagtuneError(f"Unexpected reply from {self.url}: {str(data)[:200]}") from None

    def pairs(self, passages: Sequence[str]) -> list[list[Candidate]]:
        out: list[list[Candidate]] = []
        for p in passages:
            reply = self._chat(
                "Write up to three questions that the passage below answers, each naming "
                "what it is about, with answers copied word for word from the passage. Reply "
                'with only a JSON list like [{"question": "...", "answer": "..."}]\n\n'
                f"Passage: {p}"
            )
            items = _json_in(reply, list) or []
            out.append(
                [
                    Candidate(str(x["question"]), str(x["answer"]))
                    for x in items
                    if isinstance(x, dict) and x.get("question") and x.get("answer")
                ]
            )
        return out

    def paraphrases(self, questions: Sequence[str], n: int) -> list[list[str]]:
        out = []
        for q in questions:
            reply = self._chat(
                f"Rewrite this question in {n} different ways, keeping its meaning. Reply with "
                f"only a JSON list of strings.\n\nQuestion: {q}"
            )
            items = _json_in(reply, list)
            out.append([str(x) for x in (items or [])][:n])
        return out


def _json_in(text: str, kind: type = dict) -> Any:
    """The first JSON value of ``kind`` in ``text`` (models like to wrap JSON in prose)."""
    opener = "{" if kind is dict else "["
    for i, ch in enumerate(text):
        if ch == opener:
            try:
                value, _ = json.JSONDecoder().raw_decode(text[i:])
            except json.JSONDecodeError:
                continue
            if isinstance(value, kind):
                return value
    return None
