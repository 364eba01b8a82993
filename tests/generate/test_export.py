"""``ragtune export``: safetensors with the tiny model (greedy parity through
transformers), the GGUF tensor names, and the GGUF file with the real model
(integration: transformers always, llama.cpp when installed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ragtune.cli import main
from ragtune.errors import RagtuneError
from ragtune.generate.engine import Generator
from ragtune.generate.export import gguf_name
from ragtune.models import load_lm
from tests.generate.loras import make_lora_run

PROMPTS = ["Question: What is the capital of France?\nAnswer:", "The quick brown fox"]


def _fake_run(model_folder: Path, run: Path) -> Path:
    shutil.copytree(model_folder, run / "merged")
    (run / "manifest.json").write_text(json.dumps({"format_version": 1, "method": "full"}))
    return run


def _hf_greedy(model: object, tok: object, prompt: str, n: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt")  # type: ignore[operator]
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, eos_token_id=-1,  # type: ignore[attr-defined]
                             pad_token_id=0)  # fmt: skip
    return out[0, ids["input_ids"].shape[1] :].tolist()


def _ragtune_greedy(g: Generator, prompt: str, n: int, adapter: str | None = None) -> list[int]:
    from ragtune.generate.engine import SamplingParams

    h = g.submit(prompt, SamplingParams(max_tokens=n), adapter)
    h.result()
    return list(h._req.tokens)


def test_safetensors_export_loads_in_transformers_with_the_same_tokens(
    tiny_lm: Path, tmp_path: Path
) -> None:
    run = _fake_run(tiny_lm, tmp_path / "run")
    out = tmp_path / "export"
    assert main(["export", str(run), "--format", "safetensors", "--out", str(out)]) == 0
    assert (out / "Modelfile").read_text().startswith("FROM .\n")
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == "safetensors" and manifest["format_version"] == 1
    model, tok = load_lm(str(out), device="cpu", dtype="float32")
    g = Generator.load(str(run), device="cpu", dtype="float32", slots=1, max_seq_len=128)
    for p in PROMPTS:
        assert _hf_greedy(model, tok, p, 8) == _ragtune_greedy(g, p, 8)
    g.close()
    assert main(["export", str(run), "--format", "safetensors", "--out", str(out)]) == 2


def test_gguf_names() -> None:
    assert gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    assert gguf_name("model.layers.3.self_attn.q_norm.weight") == "blk.3.attn_q_norm.weight"
    assert gguf_name("model.layers.0.pre_feedforward_layernorm.weight") == "blk.0.ffn_norm.weight"
    assert gguf_name("model.layers.17.mlp.down_proj.weight") == "blk.17.ffn_down.weight"
    assert gguf_name("lm_head.weight") is None
    with pytest.raises(RagtuneError):
        gguf_name("model.layers.0.self_attn.rotary.weight")


@pytest.mark.integration
def test_gguf_export_greedy_parity(default_lm: Path, tmp_path: Path) -> None:
    """The default model exported to GGUF (f32) gives ragtune's greedy tokens when
    transformers loads it (and llama.cpp, when installed)."""
    run = _fake_run(default_lm, tmp_path / "run")
    out = tmp_path / "gguf" / "model.gguf"
    assert main(["export", str(run), "--format", "gguf", "--gguf-type", "f32",
                 "--out", str(out)]) == 0  # fmt: skip
    assert (out.parent / "Modelfile").read_text().startswith("FROM ./model.gguf\n")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out.parent), gguf_file=out.name,
                                                 dtype=torch.float32)  # fmt: skip
    tok = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    g = Generator.load(str(default_lm), device="cpu", dtype="float32", slots=1, max_seq_len=256)
    expected = {p: _ragtune_greedy(g, p, 8) for p in PROMPTS}
    g.close()
    for p in PROMPTS:
        assert _hf_greedy(model, tok, p, 8) == expected[p]
    try:
        from llama_cpp import Llama
    except ImportError:
        return
    llm = Llama(str(out), n_ctx=256, verbose=False)
    for p in PROMPTS:
        llm.reset()
        toks = llm.tokenize(p.encode(), add_bos=True, special=True)
        got = []
        for t in llm.generate(toks, temp=0.0):
            got.append(t)
            if len(got) == 8:
                break
        assert got == expected[p]


def test_adapter_gguf_has_llamacpp_lora_layout(tiny_lm: Path, tmp_path: Path) -> None:
    """The adapter GGUF: general.type/adapter.type/alpha as llama.cpp reads them, and
    every PEFT A and B under `<base tensor>.lora_a` / `.lora_b`, values unchanged."""
    from gguf import GGUFReader
    from safetensors.torch import load_file

    from ragtune.generate.export import write_adapter_gguf

    run = make_lora_run(tiny_lm, tmp_path / "run", rank=4, seed=0, b_scale=0.1)
    out = tmp_path / "adapter.gguf"
    write_adapter_gguf(run / "adapter", out)
    reader = GGUFReader(str(out))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.architecture"] == "gemma3"
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 8.0  # alpha = 2r, as trained (scale 2)
    tensors = {t.name: t for t in reader.tensors}
    peft = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert len(tensors) == len(peft) == 2 * 7 * 2  # A and B of 7 projections, 2 layers
    for key, value in peft.items():
        layer, rest = key.split("layers.")[1].split(".", 1)
        module = ".".join(rest.split(".")[:2])
        ab = "lora_a" if ".lora_A." in key else "lora_b"
        name = f"{gguf_name(f'model.layers.{layer}.{module}.weight')}.{ab}"
        got = torch.from_numpy(tensors[name].data.copy()).reshape(value.shape)
        assert torch.equal(got, value.float()), name


def test_adapter_export_needs_a_lora_run(tiny_lm: Path, tmp_path: Path) -> None:
    run = _fake_run(tiny_lm, tmp_path / "run")  # a full fine-tune: no adapter/
    args = ["export", str(run), "--format", "gguf", "--adapter", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    args[3] = "safetensors"
    assert main(args) == 2


@pytest.mark.integration
def test_gguf_adapter_export_greedy_parity_in_llamacpp(default_lm: Path, tmp_path: Path) -> None:
    """A LoRA run on the default model exported as base GGUF + LoRA-adapter GGUF: llama.cpp
    loading base + adapter gives ragtune's greedy tokens with the adapter unmerged (and
    they differ from the base's, so the adapter is really applied)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    run = make_lora_run(default_lm, tmp_path / "run", rank=8, seed=0, b_scale=0.02)
    out = tmp_path / "gguf"
    assert main(["export", str(run), "--format", "gguf", "--adapter", "--gguf-type", "f32",
                 "--out", str(out)]) == 0  # fmt: skip
    assert (out / "Modelfile").read_text().startswith("FROM ./base.gguf\nADAPTER ./adapter.gguf\n")
    g = Generator.load(str(default_lm), device="cpu", dtype="float32", slots=1, max_seq_len=256)
    g.add_adapter("run", run)
    expected = {p: _ragtune_greedy(g, p, 8, "run") for p in PROMPTS}
    base_tokens = {p: _ragtune_greedy(g, p, 8) for p in PROMPTS}
    g.close()
    assert expected != base_tokens
    for lora in (str(out / "adapter.gguf"), None):
        llm = llama_cpp.Llama(str(out / "base.gguf"), n_ctx=256, lora_path=lora, verbose=False)
        for p in PROMPTS:
            want = expected[p] if lora else base_tokens[p]
            assert _llamacpp_greedy(llm, p, 8) == want, (p, lora)
        del llm


def _llamacpp_greedy(llm: object, prompt: str, n: int) -> list[int]:
    llm.reset()  # type: ignore[attr-defined]
    toks = llm.tokenize(prompt.encode(), add_bos=True, special=True)  # type: ignore[attr-defined]
    got: list[int] = []
    for t in llm.generate(toks, temp=0.0):  # type: ignore[attr-defined]
        got.append(t)
        if len(got) == n:
            break
    return got
