from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ragtune.errors import RagtuneError
from ragtune.models import load_lm, resolve_lm
from ragtune.tune.events import read_events
from ragtune.tune.loop import StepInfo, train
from tests.tune.conftest import FACTS, chat_row, greedy_answer, read_metrics, write_jsonl


def test_full_fine_tuning_memorises_five_facts(tiny_lm: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "facts.jsonl", [chat_row(q, a) for q, a in FACTS * 8])
    seen: list[StepInfo] = []
    result = train(
        data,
        tmp_path / "run",
        base=str(tiny_lm),
        method="full",
        epochs=20,
        batch_size=4,
        lr_multiplier=30,
        on_step=seen.append,
    )
    assert result.status == "succeeded" and result.steps == result.total_steps == 200
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == list(range(1, 201))
    assert metrics[0]["train_loss"] > 5.0 and result.train_loss is not None
    assert result.train_loss < 0.05 and metrics[-1]["train_mean_token_accuracy"] == 1.0
    assert [s.step for s in seen] == list(range(1, 201)) and seen[-1].eta_s == 0.0

    model, tok = load_lm(tmp_path / "run", device="cpu")  # the run folder stands for merged/
    assert [greedy_answer(model, tok, q) for q, _ in FACTS] == [a for _, a in FACTS]

    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["kind"] == "ragtune-run" and manifest["status"] == "succeeded"
    assert manifest["base_model"]["path"] == str(tiny_lm)
    assert manifest["hyperparameters"]["n_epochs"] == 20
    assert manifest["hyperparameters"]["learning_rate"] == pytest.approx(30 * 3e-4)
    assert manifest["data"]["train"]["examples"] == 40
    assert manifest["result"]["trained_tokens"] == result.trained_tokens > 0
    assert manifest["outputs"]["merged"] == "merged" and "adapter" not in manifest["outputs"]
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step-00000180.pt", "step-00000190.pt", "step-00000200.pt"]  # last 3 kept


def test_lora_run_writes_a_peft_adapter_and_a_merged_model(
    tiny_lm: Path, facts_file: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    valid = write_jsonl(tmp_path / "valid.jsonl", [chat_row(q, a) for q, a in FACTS[:3]])
    result = train(
        facts_file,
        tmp_path / "run",
        base=str(tiny_lm),
        method="lora",
        validation=valid,
        epochs=4,
        batch_size=2,
        lr_multiplier=10,
    )
    metrics = read_metrics(tmp_path / "run")
    first, last = metrics[:5], metrics[-5:]
    assert sum(m["train_loss"] for m in last) < sum(m["train_loss"] for m in first)  # loss falls
    assert sum(m["valid_loss"] is not None for m in metrics) == 10  # every 2nd of 20 steps
    full = [e for e in read_events(tmp_path / "run" / "events.jsonl") if "full_valid_loss" in e]
    assert [e["epoch"] for e in full] == [1, 2, 3, 4] and result.valid_loss == full[-1][
        "full_valid_loss"
    ]

    run = tmp_path / "run"
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16 and config["lora_alpha"] == 32
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_lm))
    with_adapter = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(run / "merged")).eval()
    with torch.no_grad():
        a = with_adapter(input_ids=ids).logits
        b = merged(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert resolve_lm(run) == run / "merged"


@pytest.mark.parametrize(("method", "stop_after"), [("lora", 7), ("lora", 5), ("full", 7)])
def test_resume_reaches_the_same_final_weights(
    tiny_lm: Path, facts_file: Path, tmp_path: Path, method: str, stop_after: int
) -> None:
    kwargs = dict(
        base=str(tiny_lm), method=method, epochs=3, batch_size=2, lr_multiplier=10,
        lora_dropout=0.1,  # dropout draws random numbers: resuming must restore the RNG
    )  # fmt: skip
    whole = train(facts_file, tmp_path / "whole", **kwargs)  # type: ignore[arg-type]

    steps: list[int] = []
    stopped = train(
        facts_file,
        tmp_path / "split",
        on_step=lambda s: steps.append(s.step),
        should_stop=lambda: len(steps) >= stop_after,
        **kwargs,  # type: ignore[arg-type]
    )
    assert stopped.status == "interrupted" and stopped.steps == stop_after
    assert stopped.checkpoint == tmp_path / "split" / "checkpoints" / f"step-{stop_after:08d}.pt"
    manifest = json.loads((tmp_path / "split" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    # A write killed half-way leaves a temporary file and maybe a torn event line.
    (tmp_path / "split" / "checkpoints" / ".step-00000099.pt.tmp-1").write_bytes(b"\0" * 10)
    with open(tmp_path / "split" / "events.jsonl", "a") as fh:
        fh.write('{"type": "metrics", "step": 9')
    with pytest.raises(RagtuneError, match="--resume"):
        train(facts_file, tmp_path / "split", **kwargs)  # type: ignore[arg-type]

    resumed = train(facts_file, tmp_path / "split", resume=True, **kwargs)  # type: ignore[arg-type]
    assert resumed.status == "succeeded" and resumed.steps == whole.steps == 15
    assert resumed.trained_tokens == whole.trained_tokens
    name = "adapter/adapter_model.safetensors" if method == "lora" else "merged/model.safetensors"
    a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "split" / name)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    losses_whole = [m["train_loss"] for m in read_metrics(tmp_path / "whole")]
    losses_split = [m["train_loss"] for m in read_metrics(tmp_path / "split")]
    assert losses_split == losses_whole  # each step logged once, with the same loss
    assert not list((tmp_path / "split" / "checkpoints").glob(".*tmp*"))


def test_run_folder_rules(tiny_lm: Path, facts_file: Path, tmp_path: Path) -> None:
    kwargs = dict(base=str(tiny_lm), method="lora", epochs=1, batch_size=5)
    train(facts_file, tmp_path / "run", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(RagtuneError, match="already holds a run"):
        train(facts_file, tmp_path / "run", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(RagtuneError, match="already finished"):
        train(facts_file, tmp_path / "run", resume=True, **kwargs)  # type: ignore[arg-type]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RagtuneError, match="not a ragtune run"):
        train(facts_file, tmp_path / "other", **kwargs)  # type: ignore[arg-type]

    steps: list[int] = []
    stop = dict(should_stop=lambda: True, on_step=lambda s: steps.append(1))
    train(facts_file, tmp_path / "stopped", **kwargs, **stop)  # type: ignore[arg-type]
    with pytest.raises(RagtuneError, match="hyperparameters differ"):
        train(facts_file, tmp_path / "stopped", resume=True, **{**kwargs, "batch_size": 2})  # type: ignore[arg-type]


def test_invalid_data_never_trains(tiny_lm: Path, tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat_row("q", "a")] * 10 + [{"messages": []}])
    with pytest.raises(RagtuneError, match=r"bad.jsonl:11: \[missing_messages_list\]"):
        train(bad, tmp_path / "run", base=str(tiny_lm), method="lora")
    assert not (tmp_path / "run").exists()
