"""`ragtune demo` end to end: wall time against its 15-minute budget, and the numbers it
reports. Prints one JSON object, then a one-line summary.

    python bench/demo.py                     # cold: a fresh data directory (model conversion
                                             # and ONNX export included)
    python bench/demo.py --home ~/.ragtune   # warm: reuse a data directory
    python bench/demo.py --home ~/.ragtune --lm-backend transformers   # another engine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BUDGET_S = 15 * 60
ARM_KEYS = (
    "f1",
    "f1_ci",
    "f1_seen_template",
    "f1_unseen_template",
    "contains",
    "format_ok",
    "citations_model_precision",
    "cited_share",
    "attributed_share",
    "citation_correct",
    "prep_s",
    "latency_p50_s",
    "tokens_per_s",
    "lm_backend",
)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_demo(home: Path, out: Path, seed: int, dtype: str, lm_backend: str) -> float:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "ragtune.cli", "demo", "--out", str(out), "--seed", str(seed),
           "--dtype", dtype, "--lm-backend", lm_backend]  # fmt: skip
    # The demo's own output goes to stderr, so stdout holds only the JSON report.
    proc = subprocess.run(cmd, env={**os.environ, "RAGTUNE_HOME": str(home)}, stdout=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"ragtune demo failed (exit {proc.returncode})")
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--home", type=Path, help="RAGTUNE_HOME to use (default: a fresh one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument(
        "--lm-backend",
        default="native",
        choices=["native", "transformers", "llamacpp"],
        help="generation engine of every arm (ragtune demo --lm-backend)",
    )
    args = ap.parse_args()
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or Path(tmp) / "home"
        wall_s = run_demo(home, Path(tmp) / "report", args.seed, args.dtype, args.lm_backend)
        results: dict[str, Any] = json.loads((Path(tmp) / "report" / "results.json").read_text())
    load_after = load_average()
    fresh = results.get("freshness") or {}
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "cold": args.home is None,
        "seed": args.seed,
        "dtype": args.dtype,
        "lm_backend": results["settings"].get("lm_backend", "native"),
        "load_average_before": load_before,  # 1, 5, 15 minutes (os.getloadavg)
        "load_average_after": load_after,
        "cpu_count": os.cpu_count(),
        "ragtune_version": results.get("ragtune_version"),
        "wall_s": round(wall_s, 1),
        "budget_s": BUDGET_S,
        "within_budget": wall_s <= BUDGET_S,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "arms": {arm: {k: m.get(k) for k in ARM_KEYS} for arm, m in results["arms"].items()},
        "significance": results.get("significance"),
        "freshness": {
            "n": fresh.get("n"),
            "arms": fresh.get("arms"),
            "retention": fresh.get("retention"),
            "retention_detail": fresh.get("retention_detail"),
        },
    }
    print(json.dumps(report, indent=2))
    arms = report["arms"]
    print(
        f"ragtune demo ({'cold' if report['cold'] else 'warm'}, {report['lm_backend']}): "
        f"{wall_s / 60:.1f} min "
        f"(budget 15); F1 base {arms['base']['f1']:.3f}, rag {arms['rag']['f1']:.3f}, "
        f"ft {arms['ft']['f1']:.3f}, ft_rag {arms['ft_rag']['f1']:.3f}; ft on unseen question "
        f"templates {arms['ft']['f1_unseen_template']:.3f}; format ft "
        f"{arms['ft']['format_ok']:.0%} vs rag {arms['rag']['format_ok']:.0%}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
