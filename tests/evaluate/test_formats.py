"""Format checks: regex and JSON schema."""

from __future__ import annotations

import pytest

from ragtune.errors import RagtuneError
from ragtune.evaluate.formats import parse_format_spec

SCHEMA = (
    '{"type": "object", "required": ["answer", "confidence"], "additionalProperties": false,'
    ' "properties": {"answer": {"type": "string"}, "confidence": {"enum": ["high", "low"]}}}'
)


def test_json_schema() -> None:
    spec = parse_format_spec(f"json-schema:{SCHEMA}")
    assert spec.check('{"answer": "Paris", "confidence": "high"}')
    assert not spec.check('{"answer": "Paris"}')  # missing key
    assert not spec.check('{"answer": "Paris", "confidence": "sure"}')  # not in the enum
    assert not spec.check("Paris")
    assert spec.extract('{"answer": "Paris", "confidence": "low"}') == "Paris"
    assert spec.extract("Paris [1]") == "Paris [1]"
    assert "answer, confidence" in spec.instruction


def test_json_schema_from_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "s.json"
    path.write_text(SCHEMA)
    assert parse_format_spec(f"json-schema:{path}").check('{"answer": "x", "confidence": "low"}')


def test_regex_with_answer_group() -> None:
    spec = parse_format_spec(r"regex:(?P<answer>[^()\n]+) \(source: [a-z]+\)")
    assert spec.check("Paris (source: atlas)")
    assert not spec.check("Paris")
    assert spec.extract("Paris (source: atlas)") == "Paris"


def test_plain_json() -> None:
    spec = parse_format_spec("json")
    assert spec.check('{"a": 1}') and not spec.check("[1, 2]")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("regex:(", "Bad regular expression"),
        ("json-schema:{not json", "not valid JSON"),
        ('json-schema:{"type": 5}', "Invalid JSON schema"),
        ("yaml:x", "Unknown --format-check"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(RagtuneError, match=message):
        parse_format_spec(spec)
