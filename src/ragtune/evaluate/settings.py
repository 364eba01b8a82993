"""What a comparison is asked to do, typed and checked before any work is done.

:class:`CompareSettings` holds every value that decides a comparison's numbers and
:class:`CompareInputs` the files it reads. :func:`validate` rejects bad values and missing
or unreadable inputs with one clear message each — before a knowledge base is built or
anything is written under the report folder — so a mistyped command costs nothing and the
corrected one is never refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ragtune.config import EmbedBackend, LmBackend
from ragtune.errors import RagtuneError
from ragtune.evaluate.formats import FormatSpec
from ragtune.io import file_sha256
from ragtune.tune.templateqa import QAMethod
from ragtune.types import SearchMode

Arm = Literal["base", "rag", "ft", "ft_rag"]
ARMS: tuple[Arm, ...] = ("base", "rag", "ft", "ft_rag")
RAG_ARMS = frozenset({"rag", "ft_rag"})
FT_ARMS = frozenset({"ft", "ft_rag"})
Method = Literal["lora", "full"]
DType = Literal["auto", "float32", "bfloat16"]


@dataclass(frozen=True)
class CompareSettings:
    """Everything that decides a comparison's numbers; recorded in results.json.

    ``None`` for ``epochs``, ``lr_multiplier`` and ``batch_size_train`` means ``auto``
    (see :mod:`ragtune.tune.hparams`).
    """

    arms: tuple[Arm, ...] = ARMS
    model: str = "default"
    method: Method = "lora"
    epochs: int | None = None
    lr_multiplier: float | None = None
    batch_size_train: int | None = None
    k: int = 3
    mode: SearchMode = "hybrid"
    context_tokens: int = 1024
    max_new_tokens: int = 48
    batch_size: int = 16
    max_questions: int | None = None
    max_qa_pairs: int = 200  # make-qa, when there is no --train
    qa_method: QAMethod = "template"  # how make-qa writes questions (see ragtune.tune.qa_writers)
    train_docs: bool = True  # make-qa adds the passages it read as raw-text examples
    demonstrations: int = 2  # worked examples from the training data in every arm's prompt
    freshness: int = 0
    retention: int = 12  # unchanged facts re-asked after retraining (freshness)
    seed: int = 0
    device: str = "auto"
    dtype: DType = "auto"
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None
    embedder: str | None = None  # None: the default embedder
    backend: EmbedBackend | None = None  # the embedding backend
    lm_backend: LmBackend = "native"  # the generation engine of every arm and of make-qa
    keep_kb: bool = False  # keep the knowledge base in RAGTUNE_HOME after the report

    @property
    def rag_arms(self) -> list[Arm]:
        return [a for a in self.arms if a in RAG_ARMS]

    @property
    def ft_arms(self) -> list[Arm]:
        return [a for a in self.arms if a in FT_ARMS]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["arms"] = list(self.arms)
        return d


@dataclass(frozen=True)
class CompareInputs:
    """The files a comparison reads."""

    questions: Path
    docs: Sequence[Path] = ()
    train: Path | None = None
    qrels: Path | None = None
    fmt: FormatSpec | None = field(default=None)
    # A finished ``ragtune tune`` run used for the fine-tuned arms instead of training one
    # (``train`` must then be the data it was trained on: demonstrations, leak check).
    ft_run: Path | None = None

    @property
    def squad(self) -> bool:
        return self.questions.suffix == ".json"

    def to_dict(self) -> dict[str, Any]:
        return {
            "questions": str(self.questions.resolve()),
            "docs": [str(d.resolve()) for d in self.docs],
            "train": str(self.train.resolve()) if self.train else None,
            "qrels": str(self.qrels.resolve()) if self.qrels else None,
            "format": self.fmt.to_dict() if self.fmt else None,
            "ft_run": str(self.ft_run.resolve()) if self.ft_run else None,
        }

    def hashes(self) -> dict[str, str | None]:
        """SHA-256 of every input (a folder of documents: of its files, see file_sha256)."""
        out: dict[str, str | None] = {"questions": file_sha256(self.questions)}
        out["train"] = file_sha256(self.train) if self.train else None
        out["qrels"] = file_sha256(self.qrels) if self.qrels else None
        for d in self.docs:
            out[f"docs:{d}"] = file_sha256(d)
        if self.ft_run is not None:
            out["ft_run"] = file_sha256(self.ft_run / "manifest.json")
        return out


def _positive(name: str, value: int | float | None, flag: str, zero_ok: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RagtuneError(f"{name} must be a number, not {value!r}", f"check {flag}")
    if value < 0 or (value == 0 and not zero_ok):
        limit = "0 or more" if zero_ok else "positive"
        raise RagtuneError(f"{name} must be {limit}, got {value}", f"check {flag}")


def validate(settings: CompareSettings, inputs: CompareInputs) -> None:
    """Raise :class:`RagtuneError` for the first bad setting or input (nothing is written)."""
    s = settings
    if not s.arms:
        raise RagtuneError("No arms given", "e.g. --arms base,rag,ft,ft_rag")
    for arm in s.arms:
        if arm not in ARMS:
            raise RagtuneError(f"Unknown arm {arm!r}", f"arms are {', '.join(ARMS)}")
    if len(set(s.arms)) != len(s.arms):
        raise RagtuneError(f"An arm is listed twice in {','.join(s.arms)}")
    if s.method not in get_args(Method):
        raise RagtuneError(f"Unknown method {s.method!r}", "use --method lora or full")
    if s.mode not in get_args(SearchMode):
        raise RagtuneError(f"Unknown search mode {s.mode!r}", "use hybrid, bm25 or dense")
    if s.qa_method not in get_args(QAMethod):
        raise RagtuneError(f"Unknown make-qa method {s.qa_method!r}", "use template, model or both")
    if s.dtype not in get_args(DType):
        raise RagtuneError(f"Unknown dtype {s.dtype!r}", "use auto, float32 or bfloat16")
    if s.backend is not None and s.backend not in get_args(EmbedBackend):
        raise RagtuneError(f"Unknown backend {s.backend!r}", "use torch, onnx or onnx-int8")
    if s.lm_backend not in get_args(LmBackend):
        raise RagtuneError(
            f"Unknown generation backend {s.lm_backend!r}", "use native, transformers or llamacpp"
        )
    if s.lm_backend == "llamacpp":
        from ragtune.generate.engine import check_llamacpp

        check_llamacpp(device=s.device)
    _positive("--epochs", s.epochs, "--epochs (auto or a positive integer)")
    _positive("--lr-multiplier", s.lr_multiplier, "--lr-multiplier (auto or a positive number)")
    _positive("--batch-size", s.batch_size_train, "--batch-size (auto or a positive integer)")
    _positive("-k", s.k, "-k")
    _positive("--context-tokens", s.context_tokens, "--context-tokens")
    _positive("--max-new-tokens", s.max_new_tokens, "--max-new-tokens")
    _positive("--gen-batch-size", s.batch_size, "--gen-batch-size")
    _positive("--max-questions", s.max_questions, "--max-questions")
    _positive("--max-qa-pairs", s.max_qa_pairs, "--max-qa-pairs")
    _positive("--demonstrations", s.demonstrations, "--demonstrations", zero_ok=True)
    _positive("--freshness", s.freshness, "--freshness", zero_ok=True)
    _positive("--retention", s.retention, "--retention", zero_ok=True)
    _positive("--chunk-tokens", s.chunk_tokens, "--chunk-tokens")
    _positive("--chunk-overlap", s.chunk_overlap, "--chunk-overlap", zero_ok=True)
    if s.chunk_tokens and s.chunk_overlap and s.chunk_overlap >= s.chunk_tokens:
        raise RagtuneError("--chunk-overlap must be smaller than --chunk-tokens")
    if s.device != "auto" and s.device != "cpu" and not s.device.startswith(("cuda", "mps")):
        raise RagtuneError(f"Unknown device {s.device!r}", "use auto, cpu, cuda or cuda:N")

    if not inputs.questions.is_file():
        raise RagtuneError(f"Questions file not found: {inputs.questions}")
    for path, what in ((inputs.train, "--train"), (inputs.qrels, "--qrels")):
        if path is not None and not path.is_file():
            raise RagtuneError(f"{what} file not found: {path}")
    if inputs.ft_run is not None:
        check_ft_run(inputs.ft_run, s, inputs.train)
    for d in inputs.docs:
        if not d.exists():
            raise RagtuneError(f"Documents not found: {d}", "check --docs")
    if not inputs.docs and not inputs.squad and (s.rag_arms or (s.ft_arms and not inputs.train)):
        raise RagtuneError("No documents given", "pass --docs DIR")
    if s.model != "default":
        from ragtune.models import resolve_lm

        resolve_lm(s.model)  # a clear error for a missing or non-model folder


def check_ft_run(run: Path, settings: CompareSettings, train: Path | None) -> None:
    """Refuse a run that cannot stand for the fine-tuned arms of this comparison: not a
    finished ``ragtune tune`` run, another method, another base model than the base arms
    use, or trained on other data than ``--train`` (the demonstrations and the leak check
    read ``--train``, so it must be what the model learnt)."""
    from ragtune.models import model_fingerprint, resolve_lm
    from ragtune.tune.events import read_manifest

    manifest = read_manifest(run) if run.is_dir() else None
    if manifest is None:
        raise RagtuneError(f"{run} is not a run folder from ragtune tune", "check --ft-run")
    if manifest.get("status") != "succeeded":
        raise RagtuneError(
            f"The run in {run} is {manifest.get('status')}, not finished",
            f"finish it first (ragtune tune ... --out {run} --resume)",
        )
    if manifest.get("method") != settings.method:
        raise RagtuneError(
            f"{run} is a {manifest.get('method')} run, the comparison says {settings.method}",
            f"pass --method {manifest.get('method')}",
        )
    base = manifest.get("base_model", {}).get("fingerprint")
    if base != model_fingerprint(resolve_lm(settings.model)):
        raise RagtuneError(
            f"{run} was trained from another base model than --model {settings.model}",
            "compare against the run's own base model (--model)",
        )
    if train is None:
        raise RagtuneError(
            "--ft-run needs --train: the data the run was trained on",
            "pass the run's training file with --train",
        )
    trained_on = manifest.get("data", {}).get("train", {}).get("sha256")
    if trained_on != file_sha256(train):
        raise RagtuneError(
            f"{run} was not trained on {train} (the contents differ)",
            "pass the run's own training file with --train",
        )
