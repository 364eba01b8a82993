"""Training data: three input formats and OpenAI-style validation (tokenization:
:mod:`ragtune.tune.tokens`).

Every format becomes a list of :class:`ragtune.types.Example`:

* ``chat``: OpenAI chat fine-tuning JSONL, ``{"messages": [{"role", "content", "weight"?}]}``.
* ``completion``: ``{"prompt", "completion"}`` JSONL, a user and an assistant message.
* ``text``: ``.txt`` / ``.md`` files, a folder of them, or ``{"text"}`` JSONL: one assistant
  message with no prompt, trained on whole (continued pre-training, the "unsupervised
  fine-tuning" of Ovadia et al. 2023, arXiv:2312.05934).

Validation follows the checks and error categories of OpenAI's cookbook "Data preparation
and analysis for chat model fine-tuning" (``data_type``, ``missing_messages_list``,
``message_missing_key``, ``message_unrecognized_key``, ``unrecognized_role``,
``missing_content``, ``example_missing_assistant_message``) plus the API's rules on
``weight`` and the minimum of 10 examples. Every problem carries its line number and all
are reported at once; :func:`require_valid` refuses to go on while any error remains.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from ragtune.errors import RagtuneError
from ragtune.io import file_sha256
from ragtune.types import Example, Message, Role

if TYPE_CHECKING:
    from ragtune.tune.tokens import Encoder

DataFormat = Literal["chat", "completion", "text"]
DATA_FORMATS: tuple[DataFormat, ...] = ("chat", "completion", "text")
TEXT_SUFFIXES = (".txt", ".md", ".markdown")
JSONL_SUFFIXES = (".jsonl", ".json")
MIN_EXAMPLES = 10  # the OpenAI fine-tuning API rejects training files with fewer examples

# Message keys OpenAI's validator accepts; ragtune trains on role/content/weight only.
_KNOWN_MESSAGE_KEYS = ("role", "content", "name", "weight", "function_call", "tool_calls")
_ROLES: tuple[Role, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth knowing) about a data file, at a 1-based line (0: whole file)."""

    source: str
    line: int
    category: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: [{self.category}] {self.message}"


@dataclass(frozen=True)
class TrainingData:
    """Parsed examples with where each came from, and every problem found."""

    path: str
    format: DataFormat
    examples: list[Example]  # empty when tokenized as read (load_data's ``encoder``)
    origins: list[tuple[str, int]]  # (file, line) of each example; line 0 for a whole file
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    sha256: str = ""

    @property
    def valid(self) -> bool:
        return not self.errors

    def error_counts(self) -> dict[str, int]:
        return dict(Counter(p.category for p in self.errors))


def detect_format(path: Path) -> DataFormat:
    """``text`` for folders and .txt/.md files; for JSONL, the keys of the first object."""
    if path.is_dir() or path.suffix.lower() in TEXT_SUFFIXES:
        return "text"
    if path.suffix.lower() not in JSONL_SUFFIXES:
        raise RagtuneError(
            f"Cannot tell the format of {path}",
            "use a .jsonl file (chat, prompt/completion or text records), .txt/.md files or a "
            "folder of them, or pass --format chat|completion|text",
        )
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                if "messages" in obj:
                    return "chat"
                if "prompt" in obj or "completion" in obj:
                    return "completion"
                if "text" in obj:
                    return "text"
            break
    return "chat"  # the default format; its validator then says what is missing


def resolve_data(path: str | Path, data_format: DataFormat | None) -> tuple[Path, DataFormat]:
    """The data path (checked to exist) and its format (given, or detected)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise RagtuneError(
            f"Data not found: {p}", "pass a .jsonl file, a .txt/.md file or a folder"
        )
    fmt = data_format or detect_format(p)
    if fmt not in DATA_FORMATS:
        raise RagtuneError(f"Unknown data format {fmt!r}", "use chat, completion or text")
    return p, fmt


def is_documents(path: Path, fmt: DataFormat) -> bool:
    """Whether ``path`` is read as plain-text documents (a folder, or a .txt/.md file)."""
    return path.is_dir() or (fmt == "text" and path.suffix.lower() in TEXT_SUFFIXES)


def iter_records(path: Path, fmt: DataFormat) -> Iterator[Record]:
    """Every record of a data file or folder, checked, one at a time: JSONL line by line,
    documents one file at a time."""
    if not is_documents(path, fmt):
        yield from iter_jsonl(path, fmt)
        return
    for f in _document_files(path):
        text = f.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            empty = Problem(str(f), 0, "missing_content", "empty document skipped")
            yield Record(str(f), 0, None, [], [empty])
        else:
            yield Record(str(f), 0, Example([Message("assistant", text)]), [], [])


def load_data(
    path: str | Path,
    data_format: DataFormat | None = None,
    min_examples: int = MIN_EXAMPLES,
    encoder: Encoder | None = None,
    keep: bool = True,
) -> TrainingData:
    """Read and validate a data file or folder. Problems are collected, never raised.

    With an ``encoder`` each valid example is tokenized as it is read and not kept
    (``examples`` stays empty, ``origins`` still has one entry per example), so memory
    holds the compact sequences only; after the first error nothing more is tokenized
    (the data will be refused), but every line is still checked. ``keep=False`` only
    checks: neither examples nor origins are kept, only the problems.
    """
    p, fmt = resolve_data(path, data_format)
    fmt = "text" if is_documents(p, fmt) else fmt
    data = TrainingData(str(p), fmt, [], [], sha256=file_sha256(p))
    n = 0  # valid examples
    for record in iter_records(p, fmt):
        data.errors.extend(record.errors)
        data.warnings.extend(record.warnings)
        if record.example is None:
            continue
        if encoder is not None and not data.errors:
            encoder.add(n, record.example)
        if encoder is None and keep:
            data.examples.append(record.example)
        if encoder is not None or keep:
            data.origins.append((record.source, record.line))
        n += 1
    few = too_few_examples(str(p), n, _n_bad_lines(data), min_examples)
    if fmt != "text" and few is not None:
        data.errors.append(few)
    return data


def load_examples(
    path: str | Path, data_format: DataFormat | None = None, min_examples: int = 0
) -> list[Example]:
    """The examples of a data file or folder; raises :class:`RagtuneError` if any is invalid."""
    data = load_data(path, data_format, min_examples=min_examples)
    require_valid(data)
    return data.examples


def _n_bad_lines(data: TrainingData) -> int:
    return len({(e.source, e.line) for e in data.errors if e.line})


def require_valid(data: TrainingData, what: str = "training data") -> None:
    """Raise one :class:`RagtuneError` listing every error, if there is any."""
    if data.valid:
        return
    shown = data.errors[:50]
    more = len(data.errors) - len(shown)
    lines = "\n".join(f"  {p}" for p in shown) + (f"\n  ... and {more} more" if more else "")
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(data.error_counts().items()))
    raise RagtuneError(
        f"The {what} in {data.path} is invalid ({counts}):\n{lines}",
        f"fix the lines above; `ragtune validate {data.path}` re-checks without training",
    )


T = TypeVar("T")


def repeat_to_minimum(items: Sequence[T], n: int = MIN_EXAMPLES) -> list[T]:
    """``items`` repeated in order until there are at least ``n`` of them. A training file
    needs MIN_EXAMPLES; repeating a few examples is the same as more epochs over them."""
    return [items[i % len(items)] for i in range(max(len(items), n))] if items else []


@dataclass(frozen=True)
class Record:
    """One line of a JSONL data file, parsed and checked: its example (None when it has
    errors) and its problems."""

    source: str
    line: int
    example: Example | None
    errors: list[Problem]
    warnings: list[Problem]


def iter_jsonl(path: Path, fmt: DataFormat) -> Iterator[Record]:
    """The records of a JSONL data file, one line at a time (memory does not grow with
    the file); blank lines are skipped."""
    source = str(path)
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                problem = Problem(source, lineno, "invalid_json", f"not valid JSON: {e}")
                yield Record(source, lineno, None, [problem], [])
                continue
            if fmt == "chat":
                example, errors, warnings = _parse_chat(obj)
            elif fmt == "completion":
                example, errors, warnings = _parse_completion(obj)
            else:
                example, errors, warnings = _parse_text(obj)
            yield Record(
                source,
                lineno,
                example if not errors else None,
                [Problem(source, lineno, c, m) for c, m in errors],
                [Problem(source, lineno, c, m) for c, m in warnings],
            )


def too_few_examples(path: str, valid: int, bad_lines: int, minimum: int) -> Problem | None:
    """The ``too_few_examples`` error when a file has fewer than ``minimum`` records."""
    if valid + bad_lines >= minimum:
        return None
    return Problem(
        path,
        0,
        "too_few_examples",
        f"{valid} valid example(s); fine-tuning needs at least {minimum} "
        "(OpenAI's minimum; 50-100 usually work better)",
    )


Issues = list[tuple[str, str]]  # (category, message)


def _parse_chat(obj: Any) -> tuple[Example | None, Issues, Issues]:
    """One chat line, checked the way OpenAI's chat fine-tuning validator checks it."""
    errors: Issues = []
    warnings: Issues = []
    if not isinstance(obj, dict):
        return None, [("data_type", f"expected a JSON object, got {type(obj).__name__}")], []
    messages = obj.get("messages")
    if not messages or not isinstance(messages, list):
        return None, [("missing_messages_list", "no non-empty 'messages' list")], []
    parsed: list[Message] = []
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, dict):
            errors.append(("data_type", f"message {i} is not a JSON object"))
            continue
        missing = [k for k in ("role", "content") if k not in m]
        if missing:
            errors.append(("message_missing_key", f"message {i} has no {' or '.join(missing)}"))
        unknown = sorted(k for k in m if k not in _KNOWN_MESSAGE_KEYS)
        if unknown:
            errors.append(
                (
                    "message_unrecognized_key",
                    f"message {i} has unrecognized key(s) {', '.join(unknown)} "
                    f"(allowed: {', '.join(_KNOWN_MESSAGE_KEYS)})",
                )
            )
        role = m.get("role")
        if "role" in m and role not in _ROLES:  # a missing role is reported above, once
            errors.append(
                (
                    "unrecognized_role",
                    f"message {i} has role {role!r}; ragtune trains on system, user and "
                    "assistant messages",
                )
            )
        content = m.get("content")
        calls = m.get("function_call") or m.get("tool_calls")
        if not isinstance(content, str) or (not content and not calls):
            errors.append(("missing_content", f"message {i} has no text content"))
        if calls:
            warnings.append(("ignored_key", f"message {i}: function/tool calls are not trained"))
        weight = m.get("weight", 1)
        if "weight" in m and (role != "assistant" or weight not in (0, 1) or type(weight) is bool):
            errors.append(
                (
                    "invalid_weight",
                    f"message {i}: 'weight' must be 0 or 1, on assistant messages only",
                )
            )
        elif role in _ROLES and isinstance(content, str):
            parsed.append(Message(cast(Role, role), content, int(weight)))
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "assistant" not in roles:
        errors.append(("example_missing_assistant_message", "no assistant message"))
    elif not errors and not any(m.role == "assistant" and m.weight == 1 for m in parsed):
        errors.append(
            (
                "example_missing_assistant_message",
                "every assistant message has weight 0, so there is nothing to train on",
            )
        )
    return (Example(parsed) if not errors else None), errors, warnings


def _parse_completion(obj: Any) -> tuple[Example | None, Issues, Issues]:
    if not isinstance(obj, dict):
        return None, [("data_type", f"expected a JSON object, got {type(obj).__name__}")], []
    errors: Issues = []
    missing = [k for k in ("prompt", "completion") if k not in obj]
    if missing:
        errors.append(("message_missing_key", f"no {' or '.join(missing)}"))
    unknown = sorted(k for k in obj if k not in ("prompt", "completion"))
    if unknown:
        errors.append(
            (
                "message_unrecognized_key",
                f"unrecognized key(s) {', '.join(unknown)} (allowed: prompt, completion)",
            )
        )
    for key in ("prompt", "completion"):
        if key in obj and (not isinstance(obj[key], str) or not obj[key].strip()):
            errors.append(("missing_content", f"'{key}' is not a non-empty string"))
    if errors:
        return None, errors, []
    return (
        Example([Message("user", obj["prompt"]), Message("assistant", obj["completion"])]),
        [],
        [],
    )


def _parse_text(obj: Any) -> tuple[Example | None, Issues, Issues]:
    """A ``{"text"}`` record; other keys (ids, titles) are ignored."""
    if not isinstance(obj, dict):
        return None, [("data_type", f"expected a JSON object, got {type(obj).__name__}")], []
    if "text" not in obj:
        return None, [("message_missing_key", "no 'text'")], []
    text = obj["text"]
    if not isinstance(text, str) or not text.strip():
        return None, [("missing_content", "'text' is not a non-empty string")], []
    return Example([Message("assistant", text)]), [], []


def _document_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise RagtuneError(
            f"No .txt or .md files in {path}", "put plain-text documents in the folder"
        )
    return files
