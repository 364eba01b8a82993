"""The comparison recipe end to end with tiny models, and its scoring pieces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.config import kb_path
from ragtune.errors import RagtuneError
from ragtune.evaluate.compare import run_compare
from ragtune.evaluate.formats import parse_format_spec
from ragtune.evaluate.prepare import kb_name_for, match_doc_id
from ragtune.evaluate.questions import Question
from ragtune.evaluate.scoring import aggregate, score_answer, significance
from ragtune.evaluate.settings import CompareInputs, CompareSettings
from ragtune.evaluate.world import make_world, write_world
from ragtune.generate.prompts import RAG_INSTRUCTION


def hit(doc: str, text: str) -> dict[str, object]:
    return {"chunk": {"doc_id": doc, "text": text, "chunk_id": f"{doc}#0"}}


def test_score_answer_for_a_rag_arm() -> None:
    q = Question("1", "When was Zorbland founded?", ["1887"], ["docs/z.md"])
    cite = {
        "doc_id": "docs/z.md",
        "text": "Zorbland was founded in 1887.",
        "chunk_id": "docs/z.md#0",
    }
    answer = {
        "answer": "in 1887 [1]",
        "hits": [hit("docs/z.md", "Zorbland was founded in 1887."), hit("docs/y.md", "Other.")],
        "citations": [cite],
    }
    r = score_answer(q, answer, None, rag=True)
    assert (r["pred"], r["em"], r["contains"], r["recall"], r["citation_correct"]) == (
        "in 1887",
        0.0,
        1.0,
        1.0,
        1.0,
    )
    assert r["f1"] == pytest.approx(2 / 3)  # {in, 1887} vs {1887}
    assert r["grounded"] == 1.0  # "in" and "1887" both occur in the context
    closed = score_answer(q, {"answer": "1887"}, None, rag=False)
    assert closed["em"] == 1.0 and "recall" not in closed and "grounded" not in closed


def test_score_answer_with_a_format() -> None:
    fmt = parse_format_spec("json")
    q = Question("1", "q", ["Paris"])
    r = score_answer(q, {"answer": '{"answer": "Paris"}'}, fmt, rag=False)
    assert (r["pred"], r["em"], r["format_ok"]) == ("Paris", 1.0, 1.0)
    r = score_answer(q, {"answer": "Paris"}, fmt, rag=False)
    assert (r["em"], r["format_ok"]) == (1.0, 0.0)


def test_aggregate_and_significance() -> None:
    a = [{"em": 1.0, "f1": 1.0, "contains": 1.0}] * 6 + [{"em": 0.0, "f1": 0.0, "contains": 0.0}]
    b = [{"em": 0.0, "f1": 0.0, "contains": 0.0}] * 7
    m = aggregate(a, seed=0)
    assert m["n"] == 7 and m["em"] == pytest.approx(6 / 7) and m["recall_at_k"] is None
    tests = significance({"a": a, "b": b}, seed=0)
    mc = next(t for t in tests if t["metric"] == "contains")
    assert mc["p"] == pytest.approx(2 / 64) and mc["diff"] == pytest.approx(6 / 7)  # 6 vs 0


def test_match_doc_id() -> None:
    ids = {"docs/orgs/a.md", "docs/b.txt", "squad/123.txt"}
    assert match_doc_id("docs/b.txt", ids) == "docs/b.txt"
    assert match_doc_id("orgs/a.md", ids) == "docs/orgs/a.md"
    assert match_doc_id("123", ids) == "squad/123.txt"
    assert match_doc_id("zzz", ids) is None


@pytest.fixture(scope="module")
def world_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    world = make_world(seed=1, n_orgs=1, n_people=2, n_places=1)
    return write_world(
        world, tmp_path_factory.mktemp("world"), answer_format='{"answer": "{answer}"}'
    )


def test_compare_end_to_end(
    world_files: dict[str, Path], tmp_path: Path, tiny_lm: Path, tiny_embedder: Path
) -> None:
    settings = CompareSettings(
        model=str(tiny_lm),
        embedder=str(tiny_embedder),
        backend="torch",
        epochs=1,
        max_new_tokens=6,
        freshness=1,
        device="cpu",
    )
    out = tmp_path / "report"
    fmt = parse_format_spec("json")
    inputs = CompareInputs(world_files["questions"], (world_files["docs"],), world_files["train"],
                           fmt=fmt)  # fmt: skip
    results = run_compare(settings, inputs, out)
    assert results["schema"] == 2
    assert list(results["arms"]) == ["base", "rag", "ft", "ft_rag"]
    n = len(results["questions"])
    assert n == 1 * 5 + 2 * 4 + 1 * 3
    for arm, m in results["arms"].items():
        assert m["n"] == n
        for key in ("em", "f1", "f1_ci", "contains", "format_ok", "latency_p50_s", "prep_s"):
            assert m[key] is not None, (arm, key)
        rag = arm in ("rag", "ft_rag")
        assert (m["recall_at_k"] is not None) == rag and (m["grounded"] is not None) == rag
    assert results["arms"]["rag"]["recall_at_k"] > 0  # gold doc ids were matched to the KB's
    assert results["diff"]["rag"] is None and results["diff"]["base"] is None
    assert results["diff"]["ft"]["total"] > 0
    assert results["arms"]["ft"]["tokens_trained"] > 0
    fresh = results["freshness"]
    assert fresh["n"] == 1 and set(fresh["arms"]) == {"rag", "ft", "ft_rag"}
    assert fresh["arms"]["ft"]["retrain_s"] > 0
    assert results["verdict"]["knowledge"] and results["verdict"]["behaviour"]
    assert (out / "index.html").exists() and (out / "summary.md").exists()
    q = results["questions"][0]
    assert set(q["arms"]) == {"base", "rag", "ft", "ft_rag"}

    # Fairness: one prompt for every arm apart from the retrieved sources, with the same
    # worked examples drawn from the training data.
    arms = results["arms"]
    section = f"\n\n{RAG_INSTRUCTION}\n\n{{sources}}"
    assert arms["base"]["prompt"] == arms["ft"]["prompt"]
    assert arms["rag"]["prompt"] == arms["ft_rag"]["prompt"]
    assert section in arms["rag"]["prompt"]
    assert arms["rag"]["prompt"].replace(section, "") == arms["base"]["prompt"]
    train = [json.loads(x)["messages"] for x in world_files["train"].read_text().splitlines()]
    shown = [m[-2]["content"] for m in train if m[-2]["content"] in arms["base"]["prompt"]]
    assert len(set(shown)) == 2  # two training questions are the demonstrations
    assert results["corpus"]["documents"] == 4 and results["corpus"]["chunks"] >= 4
    for arm in ("rag", "ft_rag"):
        for key in ("cited_share", "attributed_share", "citation_correct"):
            assert arms[arm][key] is not None, (arm, key)
    for m in arms.values():
        assert m["n_seen_template"] + m["n_unseen_template"] == n
    # Forgetting: the retrained model was asked the changed facts and unchanged ones.
    assert set(fresh["retention"]) == {"ft", "ft_rag"}
    job = json.loads((out / "state" / "fresh-ft-retrained.job.json").read_text())["spec"]
    assert job["model"] == str(out / "state" / "ft-run-fresh")
    assert len(job["questions"]) == 1 + min(settings.retention, n - 1)
    assert results["settings"]["epochs"] == 1 and results["data_hashes"]["questions"]
    assert results["models"]["lm_sha256"] and results["ragtune_version"]
    # The knowledge base does not outlive the report in RAGTUNE_HOME (no --keep-kb).
    assert not kb_path(kb_name_for(out)).exists()

    # Resuming does no work again: every arm's saved answers are reused as they are.
    saved = {p.name: p.stat().st_mtime_ns for p in (out / "state").glob("arm-*.json")}
    again = run_compare(settings, inputs, out)
    assert again["arms"] == results["arms"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "state").glob("arm-*.json")} == saved

    with pytest.raises(RagtuneError, match="different settings"):
        run_compare(CompareSettings(model=str(tiny_lm), k=5), inputs, out)


def test_compare_refuses_leaked_test_questions(
    world_files: dict[str, Path], tmp_path: Path, tiny_lm: Path
) -> None:
    leaky = tmp_path / "train.jsonl"
    lines = world_files["train"].read_text().splitlines()
    first_test = json.loads(world_files["questions"].read_text().splitlines()[0])["question"]
    bad = {
        "messages": [{"role": "user", "content": first_test}, {"role": "assistant", "content": "x"}]
    }
    leaky.write_text("\n".join([*lines, json.dumps(bad)]) + "\n")
    with pytest.raises(RagtuneError, match="appear in the training data"):
        run_compare(CompareSettings(model=str(tiny_lm), arms=("base", "ft")),
                    CompareInputs(world_files["questions"], (world_files["docs"],), leaky),
                    tmp_path / "r")  # fmt: skip


def test_compare_uses_a_finished_run_for_the_fine_tuned_arms(
    world_files: dict[str, Path], tmp_path: Path, tiny_lm: Path
) -> None:
    settings = CompareSettings(
        model=str(tiny_lm), arms=("ft",), epochs=1, max_new_tokens=4, device="cpu"
    )
    train = world_files["train"]
    trained = run_compare(settings, CompareInputs(world_files["questions"], (), train),
                          tmp_path / "a")  # fmt: skip
    run = tmp_path / "a" / "ft-run"
    manifest = json.loads((run / "manifest.json").read_text())

    reused = run_compare(settings, CompareInputs(world_files["questions"], (), train, ft_run=run),
                         tmp_path / "b")  # fmt: skip
    assert not (tmp_path / "b" / "ft-run").exists()  # nothing was trained
    assert [q["arms"]["ft"]["pred"] for q in reused["questions"]] == [
        q["arms"]["ft"]["pred"] for q in trained["questions"]
    ]
    assert reused["arms"]["ft"]["prep_s"] == pytest.approx(manifest["result"]["wall_time_s"])

    def refused(inputs: CompareInputs, message: str, **change: object) -> None:
        s = CompareSettings(**{**settings.to_dict(), "arms": ("ft",), **change})  # type: ignore[arg-type]
        with pytest.raises(RagtuneError, match=message):
            run_compare(s, inputs, tmp_path / "refused")
        assert not (tmp_path / "refused").exists()  # refused before anything is written

    q = world_files["questions"]
    refused(CompareInputs(q, (), train, ft_run=run), "is a lora run", method="full")
    refused(CompareInputs(q, (), None, ft_run=run), "needs --train")
    other = tmp_path / "other.jsonl"
    other.write_text(train.read_text() + train.read_text().splitlines()[0] + "\n")
    refused(CompareInputs(q, (), other, ft_run=run), "was not trained on")
    refused(CompareInputs(q, (), train, ft_run=tmp_path), "not a run folder")
    (run / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    refused(CompareInputs(q, (), train, ft_run=run), "is interrupted, not finished")
