"""``ragtune kb list | info | rm`` and ``eval retrieval`` leaving no knowledge base behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.cli import main


def ingest(tmp_path: Path, embedder: Path, kb: str) -> None:
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "sea.txt").write_text("The sea is blue and the waves are loud.\n")
    (docs / "grass.txt").write_text("Grass is green in the spring.\n")
    args = ["ingest", str(docs), "--kb", kb, "--embedder", str(embedder), "--backend", "torch"]
    assert main([*args, "--json"]) == 0


def output(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out


def test_kb_list_info_rm(
    tmp_path: Path, tiny_embedder: Path, ragtune_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kb", "list"]) == 0
    assert "no knowledge bases" in output(capsys)
    ingest(tmp_path, tiny_embedder, "docs")
    ingest(tmp_path, tiny_embedder, "eval-0123")
    output(capsys)
    assert main(["kb", "list", "--json"]) == 0
    listed = json.loads(output(capsys))["knowledge_bases"]
    assert [(k["name"], k["documents"], k["chunks"], k["made_by"]) for k in listed] == [
        ("docs", 2, 2, "ingest"),
        ("eval-0123", 2, 2, "eval"),
    ]
    assert all(k["size_bytes"] > 0 and k["problem"] == "" for k in listed)
    assert main(["kb", "list"]) == 0
    text = output(capsys)
    assert "docs" in text and "eval-0123" in text and "(built by ragtune eval)" in text
    assert main(["kb", "info", "docs", "--json"]) == 0
    info = json.loads(output(capsys))
    assert info["config"]["chunk_tokens"] == 800 and info["embedder"] == str(tiny_embedder)
    assert main(["kb", "info", "docs"]) == 0
    assert "chunk_tokens" in output(capsys)
    assert main(["kb", "rm", "eval-0123"]) == 0
    assert output(capsys) == "removed eval-0123\n"
    assert sorted(p.name for p in (ragtune_home / "kb").iterdir()) == ["docs"]
    assert main(["kb", "rm", "nope"]) == 2
    assert "No knowledge base named 'nope'" in capsys.readouterr().err
    assert main(["kb", "info", "nope"]) == 2
    assert main(["kb", "rm", "../x"]) == 2
    assert "Invalid knowledge base name" in capsys.readouterr().err


def test_kb_rm_waits_for_no_ingest(tmp_path: Path, tiny_embedder: Path) -> None:
    from ragtune.config import kb_path
    from ragtune.retrieve.kb import writer_lock

    ingest(tmp_path, tiny_embedder, "docs")
    with writer_lock(kb_path("docs"), "docs"):
        assert main(["kb", "rm", "docs"]) == 2  # an ingest holds it: refused
    assert (kb_path("docs") / "manifest.json").exists()


def beir(tmp_path: Path) -> list[str]:
    folder = tmp_path / "beir"
    folder.mkdir()
    docs = {"d1": "The sea is blue.", "d2": "Grass is green.", "d3": "Zorbland has a capital."}
    with open(folder / "corpus.jsonl", "w") as fh:
        for i, t in docs.items():
            fh.write(json.dumps({"_id": i, "title": "", "text": t}) + "\n")
    (folder / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "sea blue"}) + "\n"
        + json.dumps({"_id": "q2", "text": "green grass"}) + "\n"
    )  # fmt: skip
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    return [
        "eval", "retrieval", "--corpus", str(folder / "corpus.jsonl"),
        "--queries", str(folder / "queries.jsonl"), "--qrels", str(folder / "qrels.tsv"),
    ]  # fmt: skip


def test_eval_removes_its_knowledge_base_unless_kept(
    tmp_path: Path, tiny_embedder: Path, ragtune_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*beir(tmp_path), "--embedder", str(tiny_embedder), "--backend", "torch", "--json"]
    assert main([*args, "--fusion", "rrf", "--rrf-k", "10", "--modes", "bm25,hybrid"]) == 0
    result = json.loads(output(capsys))
    assert result["bm25"]["ndcg@10"] == 1.0  # each query's words are only in its document
    assert not list((ragtune_home / "kb").iterdir())
    assert main([*args, "--keep-kb", "--modes", "bm25"]) == 0
    kept = json.loads(output(capsys))["_meta"]["knowledge_base"]
    assert [p.name for p in (ragtune_home / "kb").iterdir()] == [kept]
    assert main([*args, "--modes", "bm25"]) == 0  # reuses the kept one, and keeps it
    assert [p.name for p in (ragtune_home / "kb").iterdir()] == [kept]


def test_eval_searches_in_batches_with_the_same_metrics(
    tmp_path: Path,
    tiny_embedder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import ragtune.evaluate.retrieval as retrieval

    args = [*beir(tmp_path), "--embedder", str(tiny_embedder), "--backend", "torch", "--json"]
    assert main([*args, "--keep-kb"]) == 0
    whole = json.loads(output(capsys))
    monkeypatch.setattr(retrieval, "SEARCH_BATCH", 1)  # one query per search
    scored = []
    score = retrieval.score_rankings

    def spy(rankings, qrels):  # type: ignore[no-untyped-def]
        scored.append(sorted(rankings))
        return score(rankings, qrels)

    monkeypatch.setattr(retrieval, "score_rankings", spy)
    assert main(args) == 0
    batched = json.loads(output(capsys))
    assert batched == whole and whole["_meta"]["queries"] == 2
    assert scored == [["q1", "q2"]] * 3  # every query ranked, in each of the three modes
