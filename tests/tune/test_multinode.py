"""``ragtune tune`` as two "nodes" (two torchrun launches, one process each, c10d rendezvous
on 127.0.0.1, the same run folder: the shared-storage case) resumes a one-process
checkpoint and follows the one-process loss curve, like one two-process launch does."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from ragtune.tune.loop import train
from tests.tune.conftest import finish, read_metrics, torchrun, worst_relative_difference
from tests.tune.test_ddp import RTOL, WEIGHT_RTOL
from tests.tune.test_fsdp import ADAPTER, cli_flags, fsdp_data, tune_settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_nodes_resume_and_follow_the_one_process_run(tiny_lm: Path, tmp_path: Path) -> None:
    data, _ = fsdp_data(tmp_path)
    settings = tune_settings(tiny_lm, "lora")
    whole = train(data, tmp_path / "whole", **settings)
    steps: list[int] = []
    train(data, tmp_path / "split", on_step=lambda s: steps.append(s.step),
          should_stop=lambda: len(steps) >= 3, **settings)  # fmt: skip
    endpoint = f"127.0.0.1:{_free_port()}"
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", endpoint, "--rdzv-id", tmp_path.name]  # fmt: skip
    args = [*cli_flags(settings), "--data", str(data), "--resume", "--out", str(tmp_path / "split")]
    nodes = [torchrun([*rendezvous, "--node-rank", str(n)], args) for n in (0, 1)]
    for node in nodes:
        finish(node)

    run = tmp_path / "split"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["hyperparameters"]["world_size"] == 2
    assert manifest["result"]["trained_tokens"] == whole.trained_tokens
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, 9))  # written once, by rank 0
    one = [m["train_loss"] for m in read_metrics(tmp_path / "whole")]
    two = [m["train_loss"] for m in metrics]
    assert all(abs(a - b) <= RTOL * a for a, b in zip(one, two, strict=True)), (one, two)
    assert worst_relative_difference(tmp_path / "whole" / ADAPTER, run / ADAPTER) < WEIGHT_RTOL
