"""Knowledge bases in PostgreSQL by setting: with RAGTUNE_DATABASE_URL set, `ragtune ingest`,
`search` and `kb list/info/rm` use PgStore (manifest in the database, nothing under
RAGTUNE_HOME/kb); without it the embedded LanceDB default. Both rank the same chunks alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.cli import main
from ragtune.errors import RagtuneError
from ragtune.retrieve.kb import KnowledgeBase, kb_lock
from ragtune.retrieve.store import LanceStore
from tests.postgres.test_pgstore import QUERIES, assert_same, write_corpus

pytestmark = pytest.mark.postgres


def ingest_cli(docs: Path, kb: str, embedder: Path, *extra: str) -> int:
    args = ["ingest", str(docs), "--kb", kb, "--embedder", str(embedder), "--backend", "torch"]
    return main([*args, "--device", "cpu", "--json", *extra])


def test_the_setting_selects_pgstore_and_results_match_lancedb(
    tmp_path: Path,
    tiny_embedder: Path,
    pg_url: str,
    ragtune_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ragtune.retrieve.pgstore import PgStore

    docs = write_corpus(tmp_path)
    assert ingest_cli(docs, "lance", tiny_embedder) == 0
    lance = KnowledgeBase.open("lance", device="cpu")
    assert isinstance(lance.store, LanceStore) and lance.manifest["backend"] == "lancedb"

    monkeypatch.setenv("RAGTUNE_DATABASE_URL", pg_url)
    assert ingest_cli(docs, "pg", tiny_embedder) == 0
    pg = KnowledgeBase.open("pg", device="cpu")
    assert isinstance(pg.store, PgStore) and pg.manifest["backend"] == "postgresql"
    assert not (ragtune_home / "kb" / "pg").exists()
    assert pg.count() == lance.count() and pg.manifest["counts"] == lance.manifest["counts"]
    for q in QUERIES:
        for mode in ("bm25", "dense", "hybrid"):
            a = lance.search(q, k=10, mode=mode)  # type: ignore[arg-type]
            assert a
            assert_same(a, pg.search(q, k=10, mode=mode))  # type: ignore[arg-type]
    capsys.readouterr()
    assert main(["search", "zorbland capital", "--kb", "pg", "--device", "cpu", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    want = lance.search("zorbland capital", k=len(hits))
    assert [h["chunk"]["chunk_id"] for h in hits] == [h.chunk.chunk_id for h in want]
    assert main(["kb", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["knowledge_bases"]
    assert [(i["name"], i["chunks"]) for i in listed] == [("pg", lance.count()[1])]
    assert listed[0]["size_bytes"] > 0
    assert main(["kb", "info", "lance"]) == 2  # the embedded one is not on this backend
    assert "No knowledge base named 'lance'" in capsys.readouterr().err
    assert main(["kb", "rm", "pg"]) == 0
    assert not KnowledgeBase.exists("pg")
    assert main(["search", "zorbland", "--kb", "pg"]) == 2


def test_incremental_ingest_prune_and_rebuild_on_postgresql(
    tmp_path: Path, tiny_embedder: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", pg_url)
    docs = write_corpus(tmp_path, n=6)
    assert ingest_cli(docs, "t", tiny_embedder) == 0
    before = KnowledgeBase.open("t").count()
    victim = sorted(docs.rglob("*.txt"))[0]
    victim.write_text("an entirely new lantern text about zorbland.\n")
    assert ingest_cli(docs, "t", tiny_embedder) == 0
    kb = KnowledgeBase.open("t")
    assert kb.count() == before
    [top] = kb.search("lantern zorbland entirely", k=1, mode="bm25")
    assert top.chunk.text.startswith("an entirely new lantern")
    victim.unlink()
    assert ingest_cli(docs, "t", tiny_embedder, "--prune") == 0
    assert KnowledgeBase.open("t").count() == (before[0] - 1, before[1] - 1)
    # a rebuild with other chunking: the old rows stay visible until the new ones commit
    assert (
        ingest_cli(
            docs, "t", tiny_embedder, "--rebuild", "--chunk-tokens", "8", "--chunk-overlap", "2"
        )
        == 0
    )
    rebuilt = KnowledgeBase.open("t")
    assert rebuilt.manifest["config"]["chunk_tokens"] == 8
    assert rebuilt.count()[0] == before[0] - 1 and rebuilt.count()[1] > before[1] - 1
    counts = rebuilt.manifest["counts"]
    assert rebuilt.count() == (counts["documents"], counts["chunks"])


def test_one_writer_per_knowledge_base_across_processes(
    tmp_path: Path, tiny_embedder: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", pg_url)
    docs = write_corpus(tmp_path, n=3)
    with kb_lock("t"):  # another host's ingest holds the advisory lock
        with pytest.raises(RagtuneError, match="Another ingest into 't' is running"):
            from ragtune.ingest.pipeline import ingest

            ingest([docs], "t", embedder=str(tiny_embedder), backend="torch")
        with kb_lock("other"):
            pass  # other knowledge bases are not blocked
    assert ingest_cli(docs, "t", tiny_embedder) == 0
