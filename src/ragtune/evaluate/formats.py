"""Behaviour checks: does an answer follow a required output form?

``--format-check SPEC`` takes one of:

* ``regex:PATTERN`` — the whole answer must match (``re.fullmatch``, DOTALL); a named
  group ``answer`` marks the part that is scored for accuracy;
* ``json`` — the answer must be a JSON object;
* ``json-schema:FILE`` or ``json-schema:{...}`` — a JSON object valid against the schema
  (JSON Schema, via the ``jsonschema`` package); its ``answer`` field is scored.

Every arm is given the same instruction describing the form; only the fine-tuned arms
have also seen it in their training examples.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ragtune.errors import RagtuneError


@dataclass(frozen=True)
class FormatSpec:
    kind: Literal["regex", "json", "json-schema"]
    spec: str  # as given on the command line
    pattern: str = ""
    schema: dict[str, Any] | None = None
    instruction: str = ""

    def check(self, answer: str) -> bool:
        """True when ``answer`` has the required form."""
        text = answer.strip()
        if self.kind == "regex":
            return re.fullmatch(self.pattern, text, flags=re.DOTALL) is not None
        obj = _json_object(text)
        if obj is None:
            return False
        if self.kind == "json" or self.schema is None:
            return True
        import jsonschema

        return bool(jsonschema.Draft202012Validator(self.schema).is_valid(obj))

    def extract(self, answer: str) -> str:
        """The part of ``answer`` that is scored for accuracy (the whole text if no part)."""
        text = answer.strip()
        if self.kind == "regex":
            m = re.fullmatch(self.pattern, text, flags=re.DOTALL)
            if m and "answer" in m.groupdict() and m.group("answer") is not None:
                return m.group("answer")
            return text
        obj = _json_object(text)
        if obj is not None and isinstance(obj.get("answer"), str | int | float):
            return str(obj["answer"])
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec, "instruction": self.instruction}


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def default_instruction(kind: str, pattern: str, schema: dict[str, Any] | None) -> str:
    if kind == "regex":
        return f"Answer in exactly this form (regular expression): {pattern}"
    keys = list((schema or {}).get("properties", {}))
    if keys:
        example = json.dumps({k: "..." for k in keys})
        return f"Reply with only a JSON object with the keys {', '.join(keys)}, like {example}"
    return "Reply with only a JSON object."


def parse_format_spec(spec: str, instruction: str | None = None) -> FormatSpec:
    """Parse ``--format-check SPEC`` (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "regex":
        try:
            re.compile(rest)
        except re.error as e:
            raise RagtuneError(f"Bad regular expression in --format-check: {e}") from None
        if not rest:
            raise RagtuneError("Empty regular expression in --format-check")
        return FormatSpec(
            "regex",
            spec,
            pattern=rest,
            instruction=instruction or default_instruction("regex", rest, None),
        )
    if spec == "json":
        return FormatSpec(
            "json", spec, instruction=instruction or default_instruction("json", "", None)
        )
    if kind == "json-schema":
        text = rest if rest.lstrip().startswith("{") else _read(Path(rest))
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as e:
            raise RagtuneError(
                f"The JSON schema in --format-check is not valid JSON: {e}"
            ) from None
        try:
            import jsonschema

            jsonschema.Draft202012Validator.check_schema(schema)
        except ImportError:
            raise RagtuneError(
                "JSON schema checks need jsonschema", "pip install jsonschema"
            ) from None
        except jsonschema.SchemaError as e:
            raise RagtuneError(f"Invalid JSON schema in --format-check: {e.message}") from None
        return FormatSpec(
            "json-schema",
            spec,
            schema=schema,
            instruction=instruction or default_instruction("json-schema", "", schema),
        )
    raise RagtuneError(
        f"Unknown --format-check {spec!r}",
        "use regex:PATTERN, json, or json-schema:FILE (or an inline {...} schema)",
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise RagtuneError(f"Cannot read the JSON schema {path}: {e.strerror}") from None
