"""The comparison's heavy steps, each in a child process so its memory is released when it
ends (and each arm's peak memory is its own).

The parent writes a typed job — ``{"kind": ..., "spec": {...}}`` with an :class:`ArmSpec`,
:class:`TuneSpec` or :class:`MakeQASpec` — and runs ``python -m ragtune.evaluate.worker
JOB.json OUT.json``; the child checks the spec, calls the library function and writes its
result to OUT.json whole or not at all. No command-line strings are built.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from ragtune.config import LmBackend
from ragtune.errors import RagtuneError
from ragtune.evaluate.arm import ArmSpec, peak_rss_mb, run_arm
from ragtune.io import write_json_atomic

Kind = Literal["arm", "tune", "make-qa"]


@dataclass(frozen=True)
class TuneSpec:
    """A fine-tuning run (:func:`ragtune.tune.loop.train`); ``None`` hyperparameters: auto."""

    data: str
    out: str
    method: Literal["lora", "full"]
    base: str
    epochs: int | None
    batch_size: int | None
    lr_multiplier: float | None
    seed: int
    device: str
    dtype: str
    resume: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TuneSpec:
        spec = cls(**d)
        if spec.method not in ("lora", "full"):
            raise ValueError(f"TuneSpec.method must be lora or full, got {spec.method!r}")
        for name in ("epochs", "batch_size"):
            v = getattr(spec, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"TuneSpec.{name} must be a positive integer or None, got {v!r}")
        if spec.lr_multiplier is not None and not spec.lr_multiplier > 0:
            raise ValueError(f"TuneSpec.lr_multiplier must be positive, got {spec.lr_multiplier}")
        return spec


@dataclass(frozen=True)
class MakeQASpec:
    """make-qa with the local base model (:func:`ragtune.tune.makeqa.make_qa_files`)."""

    docs: list[str]
    out: str  # the training JSONL to write
    base: str
    seed: int
    max_pairs: int
    device: str
    paraphrases: int = 2
    method: str = "template"  # model, template or both (ragtune.tune.templateqa.QAMethod)
    train_docs: bool = True  # add the passages read as raw-text examples
    lm_backend: LmBackend = "native"  # the generation engine (method model or both)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MakeQASpec:
        from ragtune.tune.templateqa import QA_METHODS

        spec = cls(**d)
        if spec.lm_backend not in get_args(LmBackend):
            raise ValueError(f"MakeQASpec.lm_backend must be one of {get_args(LmBackend)}")
        if spec.max_pairs < 1 or spec.paraphrases < 0:
            raise ValueError("MakeQASpec.max_pairs must be positive, paraphrases 0 or more")
        if spec.method not in QA_METHODS:
            raise ValueError(f"MakeQASpec.method must be one of {QA_METHODS}, got {spec.method!r}")
        return spec


def _tune(spec: TuneSpec) -> dict[str, Any]:
    from ragtune.tune.loop import train

    result = train(
        spec.data,
        spec.out,
        method=spec.method,
        base=spec.base,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr_multiplier=spec.lr_multiplier,
        seed=spec.seed,
        resume=spec.resume,
        device=spec.device,
        dtype=spec.dtype,
    )
    return {"status": result.status, "run_dir": str(result.run_dir), "peak_rss_mb": peak_rss_mb()}


def _make_qa(spec: MakeQASpec) -> dict[str, Any]:
    from ragtune.tune.makeqa import LocalQAWriter, make_qa_files
    from ragtune.tune.qa_writers import qa_writer

    def model_writer() -> LocalQAWriter:
        from ragtune.generate.engine import load_generator

        return LocalQAWriter(load_generator(spec.base, spec.device, "auto", spec.lm_backend))

    t0 = time.perf_counter()
    writer = qa_writer(spec.method, model_writer)  # type: ignore[arg-type]  # checked
    records, report = make_qa_files(
        [Path(d) for d in spec.docs],
        writer,
        seed=spec.seed,
        paraphrases=spec.paraphrases,
        max_pairs=spec.max_pairs,
        train_docs=spec.train_docs,
        method=spec.method,
    )
    out = Path(spec.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    from ragtune.io import write_text_atomic

    write_text_atomic(out, text)
    return {
        "records": len(records),
        "report": {**dataclasses.asdict(report), "dropped_by_reason": report.dropped_by_reason},
        "generate_s": time.perf_counter() - t0,
        "lm_backend": spec.lm_backend,
    }


def run_job(kind: Kind, spec: dict[str, Any]) -> dict[str, Any]:
    """Check ``spec`` for ``kind`` and run it in this process."""
    if kind == "arm":
        return run_arm(ArmSpec.from_dict(spec))
    if kind == "tune":
        return _tune(TuneSpec.from_dict(spec))
    if kind == "make-qa":
        return _make_qa(MakeQASpec.from_dict(spec))
    raise ValueError(f"unknown job kind {kind!r}")


def run_in_child(
    kind: Kind, spec: ArmSpec | TuneSpec | MakeQASpec, out: Path, job: Path
) -> dict[str, Any]:
    """Run a job in a child process; its result (also saved to ``out``) is returned."""
    write_json_atomic(job, {"kind": kind, "spec": dataclasses.asdict(spec)})
    proc = subprocess.run([sys.executable, "-m", "ragtune.evaluate.worker", str(job), str(out)])
    if proc.returncode != 0 or not out.exists():
        raise RagtuneError(f"The {kind} step failed (exit {proc.returncode})", "see the log above")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


def main(argv: list[str]) -> int:
    from ragtune.logs import quiet_libraries

    quiet_libraries()  # like the CLI that started this process: no library warnings
    job_path, out_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text(encoding="utf-8"))
    try:
        result = run_job(job["kind"], job["spec"])
    except RagtuneError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    write_json_atomic(out_path, result, indent=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
