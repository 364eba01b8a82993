"""The head-to-head: base vs RAG vs fine-tuned vs fine-tuned + RAG on the same questions.

:func:`run_compare` is the whole recipe, top to bottom:

1. check every setting and input (:func:`ragtune.evaluate.settings.validate`) before any
   work is done or anything is written;
2. read the questions and keep the held-out (test) ones;
3. prepare the arms (:mod:`ragtune.evaluate.prepare`): documents, training data (given or
   made by make-qa, with coverage), a knowledge base, a fine-tuning run;
4. answer every test question in every arm, each in its own process, every arm with the
   same instruction and the same worked examples (from the training data);
5. score (:mod:`ragtune.evaluate.scoring`), with bootstrap intervals and paired tests;
6. freshness (:mod:`ragtune.evaluate.refresh`): change facts, re-ingest, re-ask; retrain,
   re-ask, and measure retention;
7. write ``results.json`` (schema 2), ``summary.md`` and ``index.html``.

Every step saves its result under ``REPORT_DIR/state`` (whole or not at all), so an
interrupted run picks up where it stopped when started again with the same settings.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ragtune import __version__
from ragtune.errors import RagtuneError
from ragtune.evaluate.prepare import (
    ArmPrompt,
    arm_spec,
    build_kb,
    demonstrations,
    fine_tune,
    finished_run,
    kb_name_for,
    map_gold_docs,
    prepare_documents,
    prepare_training,
    read_json,
)
from ragtune.evaluate.questions import Question, load_questions, select_test
from ragtune.evaluate.refresh import run_freshness
from ragtune.evaluate.report import RESULTS_SCHEMA, write_report
from ragtune.evaluate.scoring import aggregate, score_answer, significance
from ragtune.evaluate.settings import (
    FT_ARMS,
    RAG_ARMS,
    CompareInputs,
    CompareSettings,
    validate,
)
from ragtune.evaluate.stats import percentile
from ragtune.evaluate.worker import run_in_child
from ragtune.io import write_json_atomic

log = logging.getLogger(__name__)
Say = Callable[[str], None]
RUN_DIR = "ft-run"  # the fine-tuning run, inside the report folder


def open_state(out: Path, settings: CompareSettings, inputs: CompareInputs, say: Say) -> Path:
    """The report's state folder for these settings and inputs.

    A finished report made with other settings (or other input files) is never mixed with
    new results: that is refused. An unfinished one (a run that failed or was stopped) is
    discarded with a note, so the corrected command just runs.
    """
    key = {"settings": settings.to_dict(), "inputs": inputs.to_dict(), "hashes": inputs.hashes()}
    key = json.loads(json.dumps(key))
    state = out / "state"
    old = read_json(state / "settings.json")
    if old is not None and old != key:
        if (out / "results.json").exists():
            raise RagtuneError(
                f"{out} holds a comparison with different settings or inputs",
                "use another --out folder, or delete this one to start over",
            )
        say("the unfinished comparison in this folder had other settings; starting over")
        _remove_kb(kb_name_for(out))
        shutil.rmtree(state)
        shutil.rmtree(out / RUN_DIR, ignore_errors=True)  # its checkpoints: other settings
    state.mkdir(parents=True, exist_ok=True)
    write_json_atomic(state / "settings.json", key)
    return state


def _remove_kb(name: str) -> None:
    from ragtune.retrieve.kb import discard_knowledge_base

    discard_knowledge_base(name)  # a folder, or rows in PostgreSQL


def run_compare(
    settings: CompareSettings,
    inputs: CompareInputs,
    out: Path,
    say: Say = lambda s: log.info(s),
) -> dict[str, Any]:
    """Run (or resume) a comparison and write its report to ``out``; returns results.json."""
    validate(settings, inputs)
    fmt = inputs.fmt
    questions = load_questions(inputs.questions, inputs.qrels)
    test = select_test(questions, settings.max_questions, settings.seed)
    if not test:
        raise RagtuneError("No test-split questions to score", 'mark some with "split": "test"')
    state = open_state(out, settings, inputs, say)
    say(f"{len(test)} test questions")
    rag_arms, ft_arms = settings.rag_arms, settings.ft_arms

    # Preparation: documents, training data, knowledge base, fine-tuning.
    doc_roots = prepare_documents(state, inputs)
    coverage = prepare_training(state, inputs, settings, test, doc_roots, say) if ft_arms else None
    train_file = state / "train.jsonl"
    kb_name = kb_name_for(out)
    arms_done = all((state / f"arm-{a}.json").exists() for a in settings.arms)
    fresh_done = settings.freshness == 0 or (state / "freshness.json").exists()
    kb = None
    if rag_arms:
        kb = read_json(state / "kb.json")
        if kb is None or not (arms_done and fresh_done):
            kb = build_kb(state, kb_name, doc_roots, settings, say)
        mapped = read_json(state / "test.json")
        if mapped is None:
            test = map_gold_docs(test, kb_name, say)
            write_json_atomic(state / "test.json", [q.to_dict() for q in test])
        else:
            test = [Question(**q) for q in mapped]
    run_dir = inputs.ft_run or out / RUN_DIR
    tuned = None
    if ft_arms and inputs.ft_run is not None:
        say(f"fine-tuned arms: the finished run {inputs.ft_run}")
        tuned = finished_run(inputs.ft_run)
    elif ft_arms:
        say(f"fine-tuning ({settings.method})")
        tuned = fine_tune(train_file, run_dir, settings, settings.model, state, "ft")

    # Every arm: the same instruction and the same worked examples from the training data.
    prompt = ArmPrompt(
        instruction=fmt.instruction if fmt else None,
        fewshot=demonstrations(
            train_file if train_file.exists() else inputs.train,
            settings.demonstrations,
            settings.seed,
        ),
    )
    results: dict[str, dict[str, Any]] = {}
    for arm in settings.arms:
        path = state / f"arm-{arm}.json"
        result = read_json(path)
        if result is None:
            say(f"answering with arm {arm}")
            model = str(run_dir) if arm in FT_ARMS else settings.model
            kb_arg = kb_name if arm in RAG_ARMS else None
            spec = arm_spec(
                arm,
                [q.question for q in test],
                settings,
                prompt,
                model,
                kb_arg,
                fmt.spec if fmt else None,
            )
            result = run_in_child("arm", spec, path, state / f"arm-{arm}.job.json")
        results[arm] = result

    # Scores and costs.
    groups = [q.group for q in test]
    scored: dict[str, list[dict[str, Any]]] = {
        arm: [
            score_answer(q, a, fmt, arm in RAG_ARMS)
            for q, a in zip(test, results[arm]["answers"], strict=True)
        ]
        for arm in settings.arms
    }
    manifest = read_json(run_dir / "manifest.json") if ft_arms else None
    arms_out = {
        arm: arm_metrics(
            arm, scored[arm], groups, results[arm], kb, tuned, coverage, manifest, settings.seed
        )
        for arm in settings.arms
    }

    fresh = None
    if settings.freshness > 0:
        fresh = run_freshness(test, scored, settings, prompt, fmt, state, kb_name, run_dir, say)

    report_data = {
        "schema": RESULTS_SCHEMA,
        "ragtune_version": __version__,
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {**settings.to_dict(), "format": fmt.to_dict() if fmt else None},
        "inputs": inputs.to_dict(),
        "data_hashes": read_json(state / "settings.json")["hashes"],
        "models": _models(settings, kb_name if kb else None, state),
        "data": {
            "name": inputs.questions.name,
            "questions": str(inputs.questions),
            "docs": [str(d) for d in inputs.docs],
            "train": str(inputs.train) if inputs.train else ("make-qa" if ft_arms else None),
            "n_test": len(test),
            "n_questions": len(questions),
        },
        "corpus": {"documents": kb["documents"], "chunks": kb["chunks"]} if kb else None,
        "coverage": coverage,
        "arms": arms_out,
        "significance": significance(scored, settings.seed),
        "training": _training_curves(run_dir, manifest) if ft_arms else None,
        "freshness": fresh,
        "diff": _diff_summary(settings.arms, run_dir, state),
        "questions": [
            {
                "qid": q.qid,
                "question": q.question,
                "answers": q.answers,
                "doc_ids": q.doc_ids,
                "group": q.group,
                "arms": {arm: scored[arm][i] for arm in settings.arms},
            }
            for i, q in enumerate(test)
        ],
    }
    write_report(report_data, out)
    if kb is not None and not settings.keep_kb:
        _remove_kb(kb_name)  # nothing unnamed is left behind in RAGTUNE_HOME
    final: dict[str, Any] = read_json(out / "results.json")
    return final


def arm_metrics(
    arm: str,
    scored: list[dict[str, Any]],
    groups: Sequence[str | None],
    result: dict[str, Any],
    kb: dict[str, Any] | None,
    tuned: dict[str, Any] | None,
    coverage: dict[str, Any] | None,
    manifest: dict[str, Any] | None,
    seed: int,
) -> dict[str, Any]:
    """An arm's quality means, its prompt, and its whole cost: preparation is the knowledge
    base build (RAG), the fine-tuning run (FT) and — when make-qa wrote the training data —
    the generation of that data (FT)."""
    m = aggregate(scored, seed, groups)
    latency = [
        rs + a["timings"]["generate_s"]
        for rs, a in zip(result["retrieve_s"], result["answers"], strict=True)
    ]
    m.update(
        prompt=result.get("prompt"),
        latency_p50_s=percentile(latency, 50),
        latency_p95_s=percentile(latency, 95),
        tokens_per_s=result["new_tokens"] / max(1e-9, result["generate_wall_s"]),
        answer_peak_memory_mb=result["peak_rss_mb"],
        weights_changed=arm in FT_ARMS,
        lm_backend=result.get("lm_backend", "native"),  # the engine that wrote the answers
    )
    prep, mem, size, trained = 0.0, result["peak_rss_mb"], 0.0, 0
    kb_s = train_s = gen_s = None
    if arm in RAG_ARMS and kb is not None:
        kb_s = kb["prep_s"]
        size += kb["mb"]
    if arm in FT_ARMS and tuned is not None:
        train_s = tuned["prep_s"]
        gen_s = coverage["generate_s"] if coverage else None
        run = (manifest or {}).get("result", {})
        trained = int(run.get("trained_tokens", 0))
        mem = max(mem, float(run.get("peak_memory_bytes", 0)) / 2**20)
        size += tuned["mb"]
    prep = sum(x for x in (kb_s, train_s, gen_s) if x is not None)
    m.update(
        prep_s=prep,
        kb_prep_s=kb_s,
        train_prep_s=train_s,
        data_generation_s=gen_s,
        peak_memory_mb=mem,
        artefact_mb=size,
        tokens_trained=trained,
    )
    return m


def _models(settings: CompareSettings, kb_name: str | None, state: Path) -> dict[str, Any]:
    """The models the numbers came from, with content hashes (computed once)."""
    done: dict[str, Any] | None = read_json(state / "models.json")
    if done is not None:
        return done
    from ragtune.io import file_sha256
    from ragtune.models import resolve_lm

    lm = resolve_lm(settings.model)
    out: dict[str, Any] = {"lm": settings.model, "lm_path": str(lm), "lm_sha256": file_sha256(lm)}
    if kb_name is not None:
        from ragtune.retrieve.kb import KnowledgeBase

        if KnowledgeBase.exists(kb_name):
            info = KnowledgeBase.open(kb_name).manifest["embedder"]
            out["embedder"] = {k: info.get(k) for k in ("name", "backend", "dim")}
    write_json_atomic(state / "models.json", out)
    return out


def _training_curves(run_dir: Path, manifest: dict[str, Any] | None) -> dict[str, Any]:
    train, valid = [], []
    events = run_dir / "events.jsonl"
    if events.exists():
        for line in events.read_text(encoding="utf-8").splitlines():
            e = json.loads(line)
            if e.get("type") == "metrics":
                if e.get("train_loss") is not None:
                    train.append([e["step"], e["train_loss"]])
                if e.get("valid_loss") is not None:
                    valid.append([e["step"], e["valid_loss"]])
    m = manifest or {}
    run = m.get("result", {})
    return {
        "method": m.get("method"),
        "loss_curve": train,
        "valid_curve": valid,
        "tokens_trained": run.get("trained_tokens"),
        "tokens_per_s": run.get("tokens_per_s"),
        "wall_time_s": run.get("wall_time_s"),
        "hyperparameters": m.get("hyperparameters"),
    }


def _diff_summary(arms: Sequence[str], run_dir: Path, state: Path) -> dict[str, Any]:
    """Weight change of each arm's model against the base (None: weights untouched)."""
    from ragtune.tune.diff import weight_diff

    diff = read_json(state / "diff.json")
    if diff is None and any(a in FT_ARMS for a in arms):
        diff = weight_diff(run_dir).to_dict()
        write_json_atomic(state / "diff.json", diff)
    out: dict[str, Any] = {}
    for arm in arms:
        if arm in FT_ARMS and diff is not None:
            top = sorted(diff["modules"], key=lambda m: -m["relative_change"])[:5]
            out[arm] = {
                "total": diff["total"]["relative_change"],
                "changed_params": diff["total"]["changed_params"],
                "params": diff["total"]["params"],
                "top": [[m["module"], m["relative_change"]] for m in top],
            }
        else:
            out[arm] = None
    return out
