"""The fine-tuned arm from documents alone: make-qa's yield and the ft arm's F1.

Runs ``ragtune compare`` without ``--train`` (so make-qa writes the training data from the
documents) on COVID-QA or on the demo world's documents, and prints one JSON object
(make-qa's coverage, every arm's F1, wall time, load) and a one-line summary.

    python bench/makeqa.py covidqa --out /tmp/mq-covid -- --max-questions 40 --max-qa-pairs 40
    python bench/makeqa.py world --out /tmp/mq-world -- --qa-method template

Everything after ``--`` is passed to ``ragtune compare`` as is (so the same script measures
older code, which lacks the newer flags). The report folder is ``OUT/report``; an existing
one is resumed by compare, so pass a fresh ``--out`` for a new measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ARM_KEYS = ("n", "em", "f1", "f1_ci", "contains", "prep_s", "data_generation_s", "train_prep_s")


def cpu_flags() -> dict[str, bool]:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return {}
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}


def inputs_for(data: str, out: Path, shared: Path, seed: int) -> list[str]:
    """The compare arguments naming the questions and documents of ``data``."""
    if data == "covidqa":
        return ["--questions", str(shared / "covidqa" / "covidqa.json")]
    from ragtune.evaluate.world import make_world, write_world

    files = write_world(make_world(seed=seed), out / "world")
    # Documents and test questions only: the world's own training file is not used.
    return ["--questions", str(files["questions"]), "--docs", str(files["docs"])]


def world_facts_covered(train: Path, seed: int) -> dict[str, int]:
    """Facts of the demo world with at least one question/answer training example whose
    answer is the fact's value (raw-document examples do not count)."""
    from ragtune.evaluate.world import make_world
    from ragtune.text import normalize_answer
    from ragtune.tune.data import load_examples

    answers = set()
    for ex in load_examples(train):
        roles = [m.role for m in ex.messages]
        if "user" in roles:
            answers |= {normalize_answer(m.content) for m in ex.messages if m.role == "assistant"}
    facts = make_world(seed=seed).facts
    covered = sum(normalize_answer(f.value) in answers for f in facts)
    return {"facts": len(facts), "facts_covered": covered}


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data", choices=["covidqa", "world"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0, help="the demo world's seed")
    ap.add_argument(
        "--shared",
        type=Path,
        default=Path(os.environ.get("RAGTUNE_SHARED_DATA", "../shared/data")),
        help="folder holding covidqa/covidqa.json",
    )
    args = ap.parse_args(own)
    args.out.mkdir(parents=True, exist_ok=True)
    report_dir = args.out / "report"
    cmd = [sys.executable, "-m", "ragtune.cli", "compare", "--out", str(report_dir)]
    cmd += inputs_for(args.data, args.out, args.shared, args.seed) + extra
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=sys.stderr)
    wall_s = time.perf_counter() - t0
    load_after = os.getloadavg()
    if proc.returncode != 0:
        raise SystemExit(f"ragtune compare failed (exit {proc.returncode})")
    results: dict[str, Any] = json.loads((report_dir / "results.json").read_text())
    cov = results.get("coverage") or {}
    facts = (
        world_facts_covered(report_dir / "state" / "train.jsonl", args.seed)
        if args.data == "world"
        else None
    )
    report = {
        "data": args.data,
        "command": " ".join(cmd),
        "machine": {"platform": platform.platform(), "cpu_flags": cpu_flags()},
        "dtype": results["settings"].get("dtype"),
        "ragtune_version": results.get("ragtune_version"),
        "wall_s": round(wall_s, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "coverage": cov,
        "world_facts": facts,
        "arms": {arm: {k: m.get(k) for k in ARM_KEYS} for arm, m in results["arms"].items()},
    }
    print(json.dumps(report, indent=2))
    f1 = ", ".join(f"{a} {m['f1']:.3f}" for a, m in report["arms"].items())
    print(
        f"make-qa on {args.data}: {cov.get('pairs_kept')} pairs kept of "
        f"{cov.get('pairs_generated')} generated, {cov.get('documents_covered')}/"
        f"{cov.get('documents')} documents covered, {cov.get('examples')} examples, "
        f"generate {cov.get('generate_s', 0):.0f} s; "
        + (f"{facts['facts_covered']}/{facts['facts']} facts covered; " if facts else "")
        + f"F1 {f1}; {wall_s / 60:.1f} min",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
