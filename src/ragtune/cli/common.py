"""Pieces the command modules share: progress bars, output, common flags."""

from __future__ import annotations

import argparse
import json
import sys
from types import TracebackType
from typing import Any, get_args

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

from ragtune.config import LmBackend, RetrieveConfig

PHASES = {
    "read": "reading files",
    "embed": "embedding chunks",
    "search": "searching",
    "generate": "generating",
}


def console() -> Console:
    return Console(highlight=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class Progress:
    """Rich progress bars driven by ``update(phase, advance, total)`` callbacks (on stderr)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
            disable=not self.enabled,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Progress:
        self._bar.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.__exit__(exc_type, exc, tb)

    def update(self, phase: str, advance: int, total: int) -> None:
        if phase not in self._tasks:
            name = PHASES.get(phase) or "  " + phase.removeprefix("doc:")  # one big document
            self._tasks[phase] = self._bar.add_task(name, total=total)
        self._bar.update(self._tasks[phase], advance=advance, total=total)


def add_dtype_arg(p: argparse.ArgumentParser, what: str, default: str = "auto") -> None:
    """``--dtype auto|float32|bfloat16`` (auto: bfloat16 where the hardware has it natively)."""
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default=default,
        help=f"precision of {what} (auto: bfloat16 where the hardware has it natively)",
    )


def add_lm_backend_arg(p: argparse.ArgumentParser, default: str = "native") -> None:
    """``--lm-backend native|transformers|llamacpp``: the generation engine (``compare``,
    ``demo``, ``make-qa``; not the embedding ``--backend``)."""
    p.add_argument(
        "--lm-backend",
        choices=list(get_args(LmBackend)),
        default=default,
        help="generation engine: native (ragtune's continuous batching), transformers "
        "(transformers' model, static batches, as before the native engine) or llamacpp "
        f"(an f16 GGUF of the same weights; needs llama-cpp-python). Default {default}",
    )


def add_fusion_args(p: argparse.ArgumentParser, cfg: RetrieveConfig) -> None:
    """How hybrid mode fuses BM25 and dense results (``search``, ``ask``, ``chat``, ``eval``)."""
    p.add_argument(
        "--fusion",
        choices=["rrf", "convex"],
        default=cfg.fusion,
        help=f"hybrid fusion: convex (min-max scores, weighted sum) or rrf ({cfg.fusion})",
    )
    p.add_argument("--rrf-k", type=int, default=cfg.rrf_k, help=f"RRF's k ({cfg.rrf_k})")
    p.add_argument("--bm25-weight", type=float, default=cfg.bm25_weight)
    p.add_argument("--dense-weight", type=float, default=cfg.dense_weight)


def add_search_args(p: argparse.ArgumentParser, cfg: RetrieveConfig, k_default: int = 0) -> None:
    k = k_default or cfg.k
    p.add_argument("-k", type=int, default=k, help=f"chunks to retrieve ({k})")
    p.add_argument("--mode", choices=["hybrid", "bm25", "dense"], default=cfg.mode)
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="source=PATH, doc_id=ID or a --meta attribute; repeat to combine",
    )
    p.add_argument("--candidates", type=int, default=cfg.candidates, help="per retriever")
    add_fusion_args(p, cfg)
    p.add_argument("--reranker", default=cfg.reranker, help="local cross-encoder folder")
    p.set_defaults(bm25_k1=cfg.bm25_k1, bm25_b=cfg.bm25_b)


def search_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The KnowledgeBase.search arguments from parsed search flags."""
    from ragtune.retrieve.store import parse_filters

    reranker = None
    if args.reranker:
        from ragtune.retrieve.rerank import CrossEncoderReranker

        reranker = CrossEncoderReranker(args.reranker, device=args.device)
    return {
        "k": args.k,
        "mode": args.mode,
        "where": parse_filters(args.filter),
        "candidates": args.candidates,
        "fusion": args.fusion,
        "rrf_k": args.rrf_k,
        "bm25_weight": args.bm25_weight,
        "dense_weight": args.dense_weight,
        "k1": args.bm25_k1,
        "b": args.bm25_b,
        "reranker": reranker,
    }
