"""validate_file counts sequences and tokens as training will, without keeping token ids."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from ragtune.tune.data import encode, load_data
from ragtune.tune.validate import validate_file
from tests.tune.conftest import chat_row, write_jsonl


def test_counts_match_the_training_sequences(tmp_path: Path, tiny_lm: Path) -> None:
    long_answer = "Paris is the capital of France. " * 12
    rows = [chat_row(f"Question {i}?", "Paris" if i % 2 else long_answer) for i in range(12)]
    data_file = write_jsonl(tmp_path / "d.jsonl", rows)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 30)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    for path, fmt in ((data_file, None), (docs, "text")):
        report = validate_file(path, base=str(tiny_lm), data_format=fmt, max_length=48)
        seqs, _ = encode(load_data(path, fmt).examples, tokenizer, 48)
        assert report.sequences == len(seqs) and report.over_length > 0
        if fmt == "text":
            assert report.sequences > report.examples  # a long document is split
        lora = next(e for e in report.estimates if e.method == "lora")
        assert lora.billed_tokens == lora.n_epochs * sum(len(s.input_ids) for s in seqs)
        assert lora.trained_tokens == lora.n_epochs * sum(s.n_targets for s in seqs)
