"""The freshness step of a comparison: change facts in the documents, then measure who
reflects them, how fast, and what retraining costs in forgetting.

1. plan the changes (:func:`ragtune.evaluate.freshness.plan_changes`) and edit the working
   copy of the documents; re-ingest (incremental) and time it;
2. ask every non-base arm the changed questions again;
3. fine-tune the fine-tuned model further on the training examples that state a changed
   fact (with the new values), time it, and ask the ``ft`` / ``ft_rag`` arms the changed
   questions *and* a sample of unchanged ones: **retention** is the share of unchanged
   facts the arm answered before retraining that it still answers after it. Retraining
   that reflects a change only by forgetting the rest shows it here.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragtune.evaluate.formats import FormatSpec
from ragtune.evaluate.freshness import FactChange, apply_change, plan_changes
from ragtune.evaluate.metrics import answer_contains
from ragtune.evaluate.prepare import ArmPrompt, arm_spec, fine_tune, read_json
from ragtune.evaluate.questions import Question
from ragtune.evaluate.settings import FT_ARMS, RAG_ARMS, CompareSettings
from ragtune.evaluate.worker import run_in_child
from ragtune.io import write_json_atomic, write_text_atomic
from ragtune.tune.data import repeat_to_minimum

Say = Callable[[str], None]
NOT_RETRAINED = "not retrained: no training example states a changed fact"


def reflected(
    answers: list[dict[str, Any]], changes: list[FactChange], fmt: FormatSpec | None
) -> tuple[int, int]:
    """How many answers give the new value, and how many still give the old one."""
    new = old = 0
    for a, c in zip(answers, changes, strict=True):
        pred = fmt.extract(a["answer"]) if fmt else a["answer"]
        new += int(answer_contains(pred, [c.new]) > 0)
        old += int(answer_contains(pred, [c.old]) > 0)
    return new, old


def retention(before: list[float], after: list[float]) -> tuple[float | None, int, int]:
    """Share of the questions answered before (``contains`` > 0) still answered after:
    ``(share or None, answered before, still answered)``."""
    answered = [i for i, v in enumerate(before) if v > 0]
    still = sum(1 for i in answered if after[i] > 0)
    return (still / len(answered) if answered else None), len(answered), still


def updated_examples(train_file: Path, changes: list[FactChange]) -> list[str]:
    """The training lines that state a changed fact, with the new value in them."""
    updated = []
    for line in train_file.read_text(encoding="utf-8").splitlines():
        new_line = line
        for c in changes:
            new_line = new_line.replace(json.dumps(c.old)[1:-1], json.dumps(c.new)[1:-1])
        if new_line != line:
            updated.append(new_line)
    return list(dict.fromkeys(updated))


def run_freshness(
    test: list[Question],
    scored: dict[str, list[dict[str, Any]]],
    settings: CompareSettings,
    prompt: ArmPrompt,
    fmt: FormatSpec | None,
    state: Path,
    kb_name: str,
    run_dir: Path,
    say: Say,
) -> dict[str, Any] | None:
    """The freshness step (see the module docstring); its result is saved in state."""
    done: dict[str, Any] | None = read_json(state / "freshness.json")
    if done is not None:
        return done
    from ragtune.ingest.pipeline import ingest
    from ragtune.retrieve.kb import KnowledgeBase

    work_docs = state / "docs"
    kb = (
        KnowledgeBase.open(kb_name, device=settings.device)
        if KnowledgeBase.exists(kb_name)
        else None
    )
    texts: dict[str, str] = {}
    paths: dict[str, Path] = {}
    if kb is not None:
        for q in test:
            for d in q.doc_ids:
                doc = kb.document(d)
                if doc is not None and d not in texts:
                    texts[d] = doc.text
                    paths[d] = Path(doc.source)
    changes = plan_changes(test, texts, settings.freshness, settings.seed)
    if not changes:
        say("freshness: no test answer occurs verbatim in its document; skipped")
        return None
    say(f"freshness: changing {len(changes)} facts")
    for c in changes:
        path = paths[c.doc_id]
        if path.resolve().is_relative_to(work_docs.resolve()):
            # A new file replaces the hard link, so the user's original is never edited.
            write_text_atomic(path, apply_change(path.read_text(encoding="utf-8"), c))
    t0 = time.perf_counter()
    ingest(sorted(work_docs.iterdir()), kb_name, device=settings.device)
    reingest_s = time.perf_counter() - t0

    by_id = {q.qid: i for i, q in enumerate(test)}
    asked = [test[by_id[c.qid]] for c in changes]
    changed = {c.qid for c in changes}
    unchanged = [i for i, q in enumerate(test) if q.qid not in changed]
    sample = sorted(
        random.Random(settings.seed).sample(unchanged, min(settings.retention, len(unchanged)))
    )
    fmt_spec = fmt.spec if fmt else None
    arms_out: dict[str, Any] = {}
    for arm in settings.arms:
        if arm == "base":
            continue
        rag = arm in RAG_ARMS
        model = str(run_dir) if arm in FT_ARMS else settings.model
        spec = arm_spec(
            f"fresh-{arm}",
            [q.question for q in asked],
            settings,
            prompt,
            model,
            kb_name if rag else None,
            fmt_spec,
        )
        result = read_json(state / f"fresh-{arm}.json") or run_in_child(
            "arm", spec, state / f"fresh-{arm}.json", state / f"fresh-{arm}.job.json"
        )
        new, old = reflected(result["answers"], changes, fmt)
        arms_out[arm] = {
            "n": len(changes),
            "reflected": new,
            "kept_old": old,
            "reingest_s": reingest_s if rag else None,
            "seconds_to_reflect": reingest_s if rag and new else None,
            "how": "re-ingest of the changed documents" if rag else "",
        }

    retained: dict[str, float | None] = {}
    retained_detail: dict[str, Any] = {}
    ft_arms = settings.ft_arms
    train_file = state / "train.jsonl"
    if ft_arms and train_file.exists():
        updated = updated_examples(train_file, changes)
        if not updated:
            say("freshness: no training example mentions a changed fact; retraining skipped")
            for arm in ft_arms:
                arms_out[arm]["how"] = NOT_RETRAINED
        else:
            new_train = state / "train-fresh.jsonl"
            write_text_atomic(new_train, "\n".join(repeat_to_minimum(updated)) + "\n")
            say(f"freshness: fine-tuning the fine-tuned model on {len(updated)} updated examples")
            new_run = state / "ft-run-fresh"
            tuned = fine_tune(new_train, new_run, settings, str(run_dir), state, "ft-fresh")
            questions = [q.question for q in asked] + [test[i].question for i in sample]
            for arm in ft_arms:
                rag = arm in RAG_ARMS
                name = f"fresh-{arm}-retrained"
                spec = arm_spec(
                    name,
                    questions,
                    settings,
                    prompt,
                    str(new_run),
                    kb_name if rag else None,
                    fmt_spec,
                )
                result = read_json(state / f"{name}.json") or run_in_child(
                    "arm", spec, state / f"{name}.json", state / f"{name}.job.json"
                )
                answers = result["answers"]
                new, _ = reflected(answers[: len(changes)], changes, fmt)
                after = [
                    answer_contains(
                        fmt.extract(a["answer"]) if fmt else a["answer"], test[i].answers
                    )
                    for a, i in zip(answers[len(changes) :], sample, strict=True)
                ]
                before = [scored[arm][i].get("contains", 0.0) for i in sample]
                share, n_before, n_still = retention(before, after)
                retained[arm] = share
                retained_detail[arm] = {
                    "asked": len(sample),
                    "answered_before": n_before,
                    "answered_after": n_still,
                }
                arms_out[arm].update(
                    reflected_after_retrain=new,
                    retrain_s=tuned["prep_s"],
                    retrain_examples=len(updated),
                )
                if not rag:
                    arms_out[arm].update(
                        seconds_to_reflect=tuned["prep_s"] if new else None,
                        how=f"further fine-tuning on the {len(updated)} updated examples",
                    )
    result = {
        "n": len(changes),
        "changes": [c.to_dict() for c in changes],
        "reingest_s": reingest_s,
        "arms": arms_out,
        "retention": retained or None,
        "retention_detail": retained_detail or None,
    }
    write_json_atomic(state / "freshness.json", result)
    return result
