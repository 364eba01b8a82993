from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from ragtune.tune.lora import LORA_TARGETS, apply_lora, lora_targets, save_outputs


def _trained_lora(tiny_lm: Path) -> torch.nn.Module:
    model = apply_lora(AutoModelForCausalLM.from_pretrained(str(tiny_lm)), rank=4, alpha=8, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # stand-in for training: B is zero at initialisation
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def test_adapter_save_and_load_give_identical_logits(tiny_lm: Path, tmp_path: Path) -> None:
    model = _trained_lora(tiny_lm)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.tensor([[2, 10, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    paths = save_outputs(model, AutoTokenizer.from_pretrained(str(tiny_lm)), tmp_path, "lora")
    assert paths == {"adapter": "adapter", "merged": "merged"}

    base = AutoModelForCausalLM.from_pretrained(str(tiny_lm))
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, before)
        assert torch.allclose(merged(input_ids=ids).logits, before, atol=1e-5)
    assert (tmp_path / "merged" / "tokenizer.json").exists()


def test_targets_are_all_attention_and_mlp_projections(tiny_lm: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm))
    assert lora_targets(model) == list(LORA_TARGETS)
    assert lora_targets(torch.nn.Sequential(torch.nn.Linear(2, 2))) == "all-linear"
