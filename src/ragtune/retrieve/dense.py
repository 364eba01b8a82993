"""Dense embeddings: an ``Embedder`` protocol and two backends for any local encoder folder.

* ``TorchEmbedder``: transformers ``AutoModel`` on CPU or CUDA.
* ``OnnxEmbedder``: the same encoder exported once to ONNX (optionally int8-quantized) and
  run with onnxruntime on CPU. Exports are cached under ``$RAGTUNE_HOME/cache/onnx``.

Both apply the pooling and normalisation that the folder's sentence-transformers config
names (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``), so their
vectors match ``sentence_transformers.SentenceTransformer`` on the same folder. A plain HF
folder gets mean pooling and L2 normalisation.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

import numpy as np

from ragtune import __version__
from ragtune.config import EmbedBackend, ragtune_home
from ragtune.errors import RagtuneError
from ragtune.io import fsync_dir, write_json_atomic
from ragtune.models import DEFAULT_EMBEDDER_NAME, model_fingerprint, pick_device, resolve_embedder

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

Pooling = Literal["mean", "cls", "max", "mean_sqrt_len_tokens", "lasttoken"]
ONNX_FORMAT_VERSION = "1.0"
ONNX_OPSET = 17  # LayerNormalization is a single op from 17 on
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Embedder(Protocol):
    """Turns texts into vectors. Implement ``embed_batch``; ``embed`` does the batching."""

    name: str
    dim: int
    max_seq_length: int
    tokenizer: Any  # the model's HF fast tokenizer; ingest chunks by its tokens

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised when the model says so."""
        ...


def embed(
    embedder: Embedder,
    texts: Sequence[str],
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Embed ``texts`` in batches of similar length (less padding); rows keep input order.

    ``progress(n_done)`` is called after each batch with the number of texts done so far.
    """
    if batch_size < 1:
        raise RagtuneError(f"batch_size must be >= 1, got {batch_size}")
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)  # (N, D)
    order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = embedder.embed_batch([texts[i] for i in rows])
        if progress is not None:
            progress(min(start + batch_size, len(texts)))
    return out


# --- pooling, as in sentence-transformers' Pooling and Normalize modules ------------------


def pool(hidden: np.ndarray, mask: np.ndarray, mode: Pooling) -> np.ndarray:
    """Sentence vectors from token vectors: hidden (B, T, H) and mask (B, T) -> (B, H)."""
    m = mask.astype(hidden.dtype)[:, :, None]  # (B, T, 1)
    if mode == "cls":
        return hidden[np.arange(len(hidden)), mask.argmax(axis=1)]  # first unmasked token
    if mode == "lasttoken":
        last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)  # (B,) last unmasked token
        return hidden[np.arange(len(hidden)), last]
    if mode == "max":
        return np.where(m > 0, hidden, -np.inf).max(axis=1)
    summed = (hidden * m).sum(axis=1)  # (B, H)
    counts = np.maximum(m.sum(axis=1), 1e-9)  # (B, 1)
    if mode == "mean":
        return summed / counts
    if mode == "mean_sqrt_len_tokens":
        return summed / np.sqrt(counts)
    raise ValueError(f"unknown pooling mode {mode!r}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (at least 1e-12, as ``torch.nn.functional.normalize``)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class EncoderSpec:
    """How to turn an encoder's token vectors into sentence vectors."""

    pooling: Pooling = "mean"
    normalize: bool = True
    max_seq_length: int = 512


def _module_kind(entry: dict[str, Any]) -> str:
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def _pooling_mode(config: dict[str, Any], where: Path) -> Pooling:
    if "pooling_mode" in config:  # sentence-transformers >= 6
        modes = config["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:
        legacy = {
            "pooling_mode_cls_token": "cls",
            "pooling_mode_max_tokens": "max",
            "pooling_mode_mean_tokens": "mean",
            "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens": "weightedmean",
            "pooling_mode_lasttoken": "lasttoken",
        }
        modes = [mode for key, mode in legacy.items() if config.get(key)]
    if len(modes) != 1 or modes[0] not in get_args(Pooling):
        raise RagtuneError(
            f"Unsupported pooling {modes} in {where}",
            f"ragtune supports exactly one of: {', '.join(get_args(Pooling))}",
        )
    mode: Pooling = modes[0]
    return mode


def read_encoder_spec(folder: Path, default_max_length: int) -> EncoderSpec:
    """Pooling, normalisation and max length from a sentence-transformers folder.

    A folder without ``modules.json`` (plain HF) gets mean pooling + normalise and
    ``default_max_length``. Modules other than Transformer, Pooling and Normalize (e.g. a
    Dense projection) are refused rather than silently skipped.
    """
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return EncoderSpec("mean", True, default_max_length)
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    kinds = [_module_kind(m) for m in modules]
    unsupported = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    if unsupported or kinds.count("Pooling") != 1:
        raise RagtuneError(
            f"Unsupported sentence-transformers modules in {folder}: {kinds}",
            "ragtune embedders support Transformer + Pooling (+ Normalize) models",
        )
    pooling_dir = folder / next(m["path"] for m in modules if _module_kind(m) == "Pooling")
    pooling_file = pooling_dir / "config.json"
    mode = _pooling_mode(json.loads(pooling_file.read_text(encoding="utf-8")), pooling_file)
    max_len = default_max_length
    st_config = folder / "sentence_bert_config.json"
    if st_config.exists():
        max_len = int(json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length") or 0)
        max_len = max_len or default_max_length
    return EncoderSpec(mode, "Normalize" in kinds, max_len)


def _default_max_length(tokenizer: Any, config: Any) -> int:
    """The model's usable length: the tokenizer's limit, capped by its position embeddings."""
    limits = [int(tokenizer.model_max_length)] if tokenizer.model_max_length < 1e6 else []
    if getattr(config, "max_position_embeddings", None):
        limits.append(int(config.max_position_embeddings))
    return min(limits) if limits else 512


@dataclass(frozen=True)
class _Encoder:
    """What both backends share: tokenizer, spec and output size of one encoder folder."""

    folder: Path
    tokenizer: Any
    spec: EncoderSpec
    dim: int
    input_names: tuple[str, ...]  # the tokenizer outputs the model takes


def _open_encoder(folder: Path) -> _Encoder:
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(folder))
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise RagtuneError(f"Could not load an encoder from {folder}: {e}") from None
    if not tokenizer.is_fast:
        raise RagtuneError(
            f"{folder} has no fast tokenizer (tokenizer.json)",
            "save the tokenizer with a recent transformers so tokenizer.json is written",
        )
    spec = read_encoder_spec(folder, _default_max_length(tokenizer, config))
    names = tuple(n for n in _MODEL_INPUTS if n in tokenizer("probe"))
    return _Encoder(folder, tokenizer, spec, int(config.hidden_size), names)


def _tokenize(encoder: _Encoder, texts: list[str]) -> dict[str, np.ndarray]:
    """Padded, truncated int64 model inputs, each (B, T)."""
    enc = encoder.tokenizer(
        texts,
        padding=True,
        truncation="longest_first",
        max_length=encoder.spec.max_seq_length,
        return_tensors="np",
    )
    return {name: enc[name].astype(np.int64) for name in encoder.input_names}


def _sentence_vectors(encoder: _Encoder, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    vectors = pool(hidden.astype(np.float32), mask, encoder.spec.pooling)  # (B, H)
    if encoder.spec.normalize:
        vectors = l2_normalize(vectors)
    return vectors.astype(np.float32)


# --- PyTorch backend ------------------------------------------------------------------------


class TorchEmbedder:
    """An encoder folder run with transformers on ``device`` ("auto": CUDA when available)."""

    backend = "torch"

    def __init__(self, folder: Path, device: str = "auto", name: str | None = None) -> None:
        self._encoder = _open_encoder(Path(folder))
        self.name = name or str(Path(folder).resolve())  # re-loadable with load_embedder
        self.dim = self._encoder.dim
        self.max_seq_length = self._encoder.spec.max_seq_length
        self.tokenizer = self._encoder.tokenizer
        self.device = pick_device(device)
        self._model: Any = None

    def load(self) -> TorchEmbedder:
        """Load the weights (done lazily by the first ``embed_batch`` otherwise)."""
        if self._model is None:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(str(self._encoder.folder))
            self._model = model.to(self.device).eval()
        return self

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        self.load()
        inputs = _tokenize(self._encoder, texts)
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(self.device) for k, v in inputs.items()}
            hidden = self._model(**tensors).last_hidden_state.float().cpu().numpy()  # (B, T, H)
        return _sentence_vectors(self._encoder, hidden, inputs["attention_mask"])


# --- ONNX backend ---------------------------------------------------------------------------


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyperthreads slow ONNX Runtime down)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                physical = value.strip()
            elif key.strip() == "core id":
                core = value.strip()
                cores.add((physical, core))
    except OSError:
        pass
    n = len(cores) or os.cpu_count() or 1
    return max(1, min(n, allowed or n))


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise RagtuneError(
            "The onnx embedding backends need onnxruntime, which is not installed",
            "pip install onnxruntime onnx, or use the torch backend (--backend torch)",
        ) from None
    return onnxruntime


def onnx_cache_dir(folder: Path, quantize: bool) -> Path:
    """Where the ONNX export of ``folder`` lives: ``cache/onnx/<fingerprint>-<fp32|int8>``."""
    kind = "int8" if quantize else "fp32"
    return ragtune_home() / "cache" / "onnx" / f"{model_fingerprint(folder)}-{kind}"


def _read_onnx_manifest(target: Path) -> dict[str, Any] | None:
    """The cached export's manifest, or None when the cache entry is unusable."""
    try:
        manifest: dict[str, Any] = json.loads((target / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    major = str(manifest.get("format_version", "")).split(".")[0]
    if major != ONNX_FORMAT_VERSION.split(".")[0] or not (target / "model.onnx").exists():
        return None
    return manifest


def exported_onnx(folder: Path, quantize: bool) -> Path:
    """The cached ``model.onnx`` for ``folder``, exporting (and quantizing) it on first use.

    Each export is built in a temporary folder and renamed into place, so readers never see
    a partial export, and two processes exporting at once both end up using one whole copy.
    """
    target = onnx_cache_dir(folder, quantize)
    if _read_onnx_manifest(target) is not None:
        return target / "model.onnx"
    source = exported_onnx(folder, quantize=False) if quantize else None
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        if source is not None:
            log.info("Quantizing %s to int8 (once)...", folder)
            details = quantize_int8(source, work / "model.onnx")
        else:
            log.info("Exporting %s to ONNX (once)...", folder)
            details = export_onnx(folder, work / "model.onnx")
        manifest = {
            "format_version": ONNX_FORMAT_VERSION,
            "ragtune_version": __version__,
            "source_model": str(folder),
            "source_fingerprint": model_fingerprint(folder),
            "opset": ONNX_OPSET,
            "quantization": "int8-dynamic" if quantize else None,
            **details,
        }
        write_json_atomic(work / "manifest.json", manifest)
        if target.exists() and _read_onnx_manifest(target) is None:
            shutil.rmtree(target, ignore_errors=True)  # stale: an older format version
        try:
            os.replace(work, target)
            fsync_dir(target.parent)
        except OSError:
            if _read_onnx_manifest(target) is None:  # not a concurrent export: a real failure
                raise
            log.info("Another process exported %s meanwhile; using its copy", folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / "model.onnx"


def export_onnx(folder: Path, out: Path) -> dict[str, Any]:
    """Export the encoder's ``last_hidden_state`` to ONNX with dynamic batch and sequence axes.

    Uses the TorchScript exporter (``dynamo=False``): the dynamo exporter needs onnxscript,
    which ragtune does not depend on. The export is checked against PyTorch on inputs of a
    different shape than the traced ones before it is accepted.
    """
    import torch
    from transformers import AutoModel

    encoder = _open_encoder(folder)
    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    names = encoder.input_names

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.encoder(**dict(zip(names, inputs, strict=True))).last_hidden_state

    probe = ["ragtune checks its ONNX export.", "a b c d e f g h " * 6, "short"]
    check = _tokenize(encoder, probe)  # (3, T) each, unlike the traced (2, T') below
    with torch.inference_mode():
        expected = model(**{k: torch.from_numpy(v) for k, v in check.items()}).last_hidden_state
    traced = _tokenize(encoder, ["an example input", "a somewhat longer example input here"])
    axes = {name: {0: "batch", 1: "sequence"} for name in (*names, "last_hidden_state")}
    with warnings.catch_warnings():  # tracer warnings; the export is checked numerically below
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LastHidden(),
            tuple(torch.from_numpy(traced[n]) for n in names),
            str(out),
            dynamo=False,
            input_names=list(names),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )
    session = _onnx_session(out, threads=1)
    feeds = {i.name: check[i.name] for i in session.get_inputs()}
    got = session.run(None, feeds)[0]  # (3, T, H)
    mask = check["attention_mask"][:, :, None]
    diff = float(np.abs((got - expected.numpy()) * mask).max())
    if not diff < 1e-3:
        raise RagtuneError(
            f"The ONNX export of {folder} does not match PyTorch (max difference {diff:.3g})",
            "use the torch backend (--backend torch) for this model",
        )
    return {"inputs": list(names), "export_check_max_abs_diff": diff}


def quantize_int8(source: Path, out: Path) -> dict[str, Any]:
    """Dynamic int8 quantization: per-channel int8 weights for every MatMul with constant
    weights, activations quantized at run time; embeddings (Gather) stay fp32.

    Per-tensor weights lost too much (all-MiniLM-L6-v2 on SciFact: mean cosine to fp32 0.937);
    per-channel keeps 0.995 and nDCG@10 0.6455 against fp32's 0.6451.
    """
    _require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = {"op_types_to_quantize": ["MatMul"], "per_channel": True}
    quantize_dynamic(
        source,
        out,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
    )
    return {"quantize_options": options}


def _onnx_session(path: Path, threads: int | None = None) -> onnxruntime.InferenceSession:
    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEmbedder:
    """An encoder folder exported to ONNX and run on CPU with onnxruntime."""

    def __init__(
        self,
        folder: Path,
        quantize: bool = False,
        name: str | None = None,
        threads: int | None = None,
    ) -> None:
        _require_onnxruntime()
        self._encoder = _open_encoder(Path(folder))
        self.name = name or str(Path(folder).resolve())  # re-loadable with load_embedder
        self.dim = self._encoder.dim
        self.max_seq_length = self._encoder.spec.max_seq_length
        self.tokenizer = self._encoder.tokenizer
        self.quantize = quantize
        self.backend = "onnx-int8" if quantize else "onnx"
        self.threads = threads or physical_cores()
        self._session: onnxruntime.InferenceSession | None = None

    def load(self) -> OnnxEmbedder:
        """Export (first use only) and open the ONNX model; lazy otherwise."""
        if self._session is None:
            path = exported_onnx(self._encoder.folder, self.quantize)
            self._session = _onnx_session(path, self.threads)
        return self

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        self.load()
        assert self._session is not None
        inputs = _tokenize(self._encoder, texts)
        feeds = {i.name: inputs[i.name] for i in self._session.get_inputs()}
        hidden = self._session.run(None, feeds)[0]  # (B, T, H)
        return _sentence_vectors(self._encoder, hidden, inputs["attention_mask"])


def load_embedder(
    name_or_path: str = "default",
    backend: EmbedBackend = "onnx",
    device: str = "auto",
) -> TorchEmbedder | OnnxEmbedder:
    """Load an embedder with an explicitly chosen backend.

    ``torch`` runs on ``device`` (auto: CUDA when available). ``onnx`` and ``onnx-int8`` run
    on CPU; asking them for another device is an error rather than a silent switch.
    """
    if backend not in get_args(EmbedBackend):
        raise RagtuneError(
            f"Unknown embedding backend {backend!r}",
            f"use one of: {', '.join(get_args(EmbedBackend))}",
        )
    folder = resolve_embedder(name_or_path)
    name = DEFAULT_EMBEDDER_NAME if name_or_path in ("default", DEFAULT_EMBEDDER_NAME) else None
    if backend == "torch":
        return TorchEmbedder(folder, device, name=name).load()
    if device not in ("auto", "cpu"):
        raise RagtuneError(
            f"The {backend} embedding backend runs on CPU only, not on {device!r}",
            "use --backend torch to embed on a GPU",
        )
    return OnnxEmbedder(folder, quantize=backend == "onnx-int8", name=name).load()
