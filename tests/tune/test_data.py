from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ragtune.errors import RagtuneError
from ragtune.tune.data import (
    detect_format,
    load_data,
    load_examples,
    repeat_to_minimum,
    require_valid,
)
from ragtune.tune.tokens import IGNORE, Encoder, bos_to_prepend, encode, encode_example
from ragtune.types import Example, Message
from tests.tune.conftest import chat_row, write_jsonl

GOOD = chat_row("Who founded Zorbland?", "Mira Quell")


def test_each_invalid_category_is_reported_with_its_line(tmp_path: Path) -> None:
    rows: list[object] = [GOOD] * 10  # lines 1-10 are valid
    rows += [
        "[1, 2]",  # 11 data_type
        {"messages": []},  # 12 missing_messages_list
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},  # 13 missing key
        {
            "messages": [
                {"role": "user", "content": "q", "extra": 1},
                {"role": "assistant", "content": "a"},
            ]
        },  # 14
        {
            "messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]
        },  # 15
        {
            "messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]
        },  # 16
        {"messages": [{"role": "user", "content": "only a question"}]},  # 17 no assistant
        "{not json",  # 18 invalid_json
        {
            "messages": [
                {"role": "user", "content": "q", "weight": 1},
                {"role": "assistant", "content": "a"},
            ]
        },  # 19
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "weight": 0},
            ]
        },  # 20
    ]
    data = load_data(write_jsonl(tmp_path / "bad.jsonl", rows))
    found = {(p.line, p.category) for p in data.errors}
    assert found == {
        (11, "data_type"),
        (12, "missing_messages_list"),
        (13, "message_missing_key"),
        (13, "missing_content"),  # as in OpenAI's validator: no content is also missing content
        (14, "message_unrecognized_key"),
        (15, "unrecognized_role"),
        (16, "missing_content"),
        (17, "example_missing_assistant_message"),
        (18, "invalid_json"),
        (19, "invalid_weight"),
        (20, "example_missing_assistant_message"),
    }
    assert len(data.examples) == 10 and not data.valid
    with pytest.raises(RagtuneError) as e:
        require_valid(data)
    text = str(e.value)
    assert "bad.jsonl:11: [data_type]" in text and "bad.jsonl:20:" in text  # all at once


def test_too_few_examples(tmp_path: Path) -> None:
    data = load_data(write_jsonl(tmp_path / "few.jsonl", [GOOD] * 9))
    assert [(p.line, p.category) for p in data.errors] == [(0, "too_few_examples")]
    assert load_data(tmp_path / "few.jsonl", min_examples=0).valid


def test_weights_names_and_system_messages_are_kept(tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Be brief.", "name": "sys"},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "weight": 0},
            {"role": "user", "content": "Who founded Zorbland?"},
            {"role": "assistant", "content": "Mira Quell", "weight": 1},
        ]
    }
    data = load_data(write_jsonl(tmp_path / "w.jsonl", [row] * 10))
    assert data.valid
    assert [m.weight for m in data.examples[0].messages] == [1, 1, 0, 1, 1]
    assert data.origins[3] == (str(tmp_path / "w.jsonl"), 4)


def test_formats_are_detected_and_converted(tmp_path: Path) -> None:
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2?", "completion": "4"}] * 10)
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "Zorbland is old.", "id": 3}])
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Zorbland\nFounded in 1887.")
    (docs / "b.txt").write_text("Vetrin is the capital.")
    (docs / "empty.txt").write_text("  ")
    assert detect_format(pc) == "completion" and detect_format(text) == "text"
    assert detect_format(docs) == "text" and detect_format(docs / "a.md") == "text"
    assert load_examples(pc)[0] == Example([Message("user", "2+2?"), Message("assistant", "4")])
    assert load_examples(text) == [Example([Message("assistant", "Zorbland is old.")])]
    data = load_data(docs)
    assert data.valid and len(data.examples) == 2  # the empty document is skipped, with a warning
    assert [p.category for p in data.warnings] == ["missing_content"]
    bad = write_jsonl(
        tmp_path / "pc_bad.jsonl", [{"prompt": "x"}, {"prompt": "", "completion": "y"}]
    )
    assert {(p.line, p.category) for p in load_data(bad, min_examples=0).errors} == {
        (1, "message_missing_key"),
        (2, "missing_content"),
    }


def test_encoding_labels_only_weighted_assistant_tokens(tiny_lm: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_lm))
    bos = bos_to_prepend(tok)
    assert bos == tok.bos_token_id
    ex = Example(
        [
            Message("user", "Who founded Zorbland?"),
            Message("assistant", "Mira Quell", weight=0),
            Message("user", "What is the capital?"),
            Message("assistant", "Vetrin"),
        ]
    )
    ids, labels = encode_example(ex, tok, bos)
    assert ids[0] == bos and labels[0] == IGNORE
    trained = tok.decode([t for t in labels if t != IGNORE])
    assert trained == " Vetrin<eos>"
    assert tok.decode(ids[1:]) == (
        "Question: Who founded Zorbland?\nAnswer: Mira Quell<eos>\n\n"
        "Question: What is the capital?\nAnswer: Vetrin<eos>"
    )


def test_long_documents_are_split_and_long_chats_truncated(tiny_lm: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_lm))
    doc = Example([Message("assistant", "The quick brown fox jumps. " * 20)])
    chat = Example([Message("user", "abc " * 40), Message("assistant", "Paris")])
    n_doc = len(encode_example(doc, tok, bos_to_prepend(tok))[0])
    seqs, truncated = encode([doc, chat], tok, max_length=32)
    doc_seqs = [s for s in seqs if s.example == 0]
    assert len(doc_seqs) == -(-(n_doc - 1) // 31)  # windows of 31 tokens after BOS
    assert all(len(s.input_ids) <= 32 and s.input_ids[0] == tok.bos_token_id for s in doc_seqs)
    # Every document token is trained exactly once across the windows.
    assert sum(sum(t != IGNORE for t in s.labels) for s in doc_seqs) == n_doc - 1
    assert truncated == [1]  # the chat lost its answer: no sequence left to train on
    assert all(s.example == 0 for s in seqs)


def test_repeat_to_minimum_cycles_in_order() -> None:
    assert repeat_to_minimum(["a", "b", "c"], 7) == ["a", "b", "c", "a", "b", "c", "a"]
    assert repeat_to_minimum(["a", "b"], 1) == ["a", "b"]
    assert len(repeat_to_minimum(["a"])) == 10
    assert repeat_to_minimum([]) == []


def test_missing_role_is_reported_once(tmp_path: Path) -> None:
    row = {"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]}
    data = load_data(write_jsonl(tmp_path / "r.jsonl", [row] + [GOOD] * 9))
    assert [(p.line, p.category, p.message) for p in data.errors] == [
        (1, "message_missing_key", "message 1 has no role")
    ]


def test_tokenizing_as_read_gives_the_same_sequences_and_keeps_no_example(
    tmp_path: Path, tiny_lm: Path
) -> None:
    tok = AutoTokenizer.from_pretrained(str(tiny_lm))
    rows = [chat_row(f"Question {i} " + "abc " * (i * 7), f"Answer {i}") for i in range(12)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    whole = load_data(path)
    expected = encode(whole.examples, tok, max_length=24)
    encoder = Encoder(tok, 24)
    streamed = load_data(path, encoder=encoder)
    got = encoder.result()
    assert streamed.examples == [] and streamed.origins == whole.origins
    assert got[1] == expected[1] and got[1]  # the same conversations truncated
    assert [(s.input_ids.tolist(), s.labels.tolist(), s.example) for s in got[0]] == [
        (s.input_ids.tolist(), s.labels.tolist(), s.example) for s in expected[0]
    ]
    # Checks only: nothing kept, the same problems found; after an error nothing more is
    # tokenized (the run will be refused), but every line is still checked.
    bad = write_jsonl(tmp_path / "bad.jsonl", [*rows[:3], "not json", *rows[3:], "{}"])
    checked = load_data(bad, keep=False)
    assert checked.examples == [] and checked.origins == []
    assert [(p.line, p.category) for p in checked.errors] == [
        (p.line, p.category) for p in load_data(bad).errors
    ]
    late = Encoder(tok, 24)
    load_data(bad, encoder=late)
    assert {s.example for s in late.sequences} == {0, 1, 2}
