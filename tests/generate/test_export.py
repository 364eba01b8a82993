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


def _ragtune_greedy(g: Generator, prompt: str, n: int) -> list[int]:
    from ragtune.generate.engine import SamplingParams

    h = g.submit(prompt, SamplingParams(max_tokens=n))
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
