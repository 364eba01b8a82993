"""`ragtune serve` under load: 16 concurrent official-SDK clients on loopback.

Starts a server (its own data directory, the default models), fine-tunes 4 tiny models
through the API (1 step each: they exist to be served, not to be good), then runs
``--clients`` threads for ``--seconds``, each cycling through three requests: a chat
completion on the base model, a streamed chat completion on one of the 4 fine-tuned
models, and an embeddings call. Prints one JSON object and a one-line summary:
requests/s, completion tokens/s, p50/p99 latency per kind, time to first token of the
streams, and the error count.

    python bench/serve.py                       # 16 clients, 60 s
    python bench/serve.py --clients 4 --seconds 20 --max-tokens 16
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from openai import OpenAI

KEY = "sk-bench"
QUESTIONS = [
    "What is the capital of Zorbland?",
    "Who founded the Vetrin Observatory?",
    "What does fine-tuning change?",
    "Why do people use retrieval?",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RAGTUNE_HOME": str(home), "RAGTUNE_API_KEYS": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragtune.cli", "serve", "--port", str(port), "--workers", "1"],
        env=env,
    )
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            client.models.list()
            return proc
        except Exception:
            if proc.poll() is not None:
                raise SystemExit("ragtune serve exited") from None
            time.sleep(0.5)
    raise SystemExit("ragtune serve did not start")


def fine_tune_models(client: OpenAI, n: int) -> list[str]:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{q} ({i})"},
                {"role": "assistant", "content": "An answer."},
            ]
        }
        for i, q in enumerate(QUESTIONS * 3)
    ][:10]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    f = client.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="fine-tune")
    jobs = [
        client.fine_tuning.jobs.create(
            model="gemma-3-270m",
            training_file=f.id,
            suffix=f"bench{i}",
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 10}},
            },
        ).id
        for i in range(n)
    ]
    models = []
    for job_id in jobs:
        while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            time.sleep(1)
        if job.fine_tuned_model is None:
            raise SystemExit(f"fine-tuning job {job_id} ended {job.status}: {job.error}")
        models.append(job.fine_tuned_model)
    return models


def client_loop(
    base_url: str,
    models: list[str],
    index: int,
    until: float,
    max_tokens: int,
    out: dict[str, list[Any]],
    lock: threading.Lock,
) -> None:
    client = OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=600)
    i = index
    while time.monotonic() < until:
        kind = ("chat", "stream", "embeddings")[i % 3]
        question = QUESTIONS[i % len(QUESTIONS)]
        t0 = time.perf_counter()
        first: float | None = None
        tokens = 0
        try:
            if kind == "chat":
                r = client.chat.completions.create(
                    model="gemma-3-270m",
                    messages=[{"role": "user", "content": question}],
                    max_tokens=max_tokens,
                    temperature=0,
                )
                tokens = r.usage.completion_tokens if r.usage else 0
            elif kind == "stream":
                stream = client.chat.completions.create(
                    model=models[i % len(models)],
                    messages=[{"role": "user", "content": question}],
                    max_tokens=max_tokens,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - t0
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
            else:
                client.embeddings.create(model="all-MiniLM-L6-v2", input=[question] * 8)
            elapsed = time.perf_counter() - t0
            with lock:
                out[kind].append(elapsed)
                out["tokens"].append(tokens)
                if first is not None:
                    out["ttft"].append(first)
        except Exception as e:  # counted, and the first few shown
            with lock:
                out["errors"].append(f"{kind}: {type(e).__name__}: {e}")
        i += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--models", type=int, default=4, help="fine-tuned models to stream from")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="ragtune-bench-serve-") as tmp:
        home = Path(tmp)
        real_home = Path(os.environ.get("RAGTUNE_HOME", Path.home() / ".ragtune"))
        for shared in ("models", "cache"):  # converted models, not the service's state
            (real_home / shared).mkdir(parents=True, exist_ok=True)
            (home / shared).symlink_to(real_home / shared)
        port = _free_port()
        proc = start_server(home, port)
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            setup_t0 = time.perf_counter()
            models = fine_tune_models(OpenAI(base_url=base_url, api_key=KEY), args.models)
            setup_s = time.perf_counter() - setup_t0
            out: dict[str, list[Any]] = {
                k: [] for k in ("chat", "stream", "embeddings", "ttft", "tokens", "errors")
            }
            lock = threading.Lock()
            t0 = time.monotonic()
            until = t0 + args.seconds
            threads = [
                threading.Thread(
                    target=client_loop,
                    args=(base_url, models, i, until, args.max_tokens, out, lock),
                )
                for i in range(args.clients)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    done = sum(len(out[k]) for k in ("chat", "stream", "embeddings"))
    report = {
        "clients": args.clients,
        "seconds": args.seconds,
        "wall_s": round(wall, 2),
        "max_tokens": args.max_tokens,
        "fine_tuned_models": len(models),
        "setup_s": round(setup_s, 1),
        "requests": done,
        "requests_per_s": round(done / wall, 3),
        "completion_tokens_per_s": round(sum(out["tokens"]) / wall, 2),
        "latency_s": {
            k: {
                "n": len(out[k]),
                "p50": _percentile(out[k], 50),
                "p99": _percentile(out[k], 99),
            }
            for k in ("chat", "stream", "embeddings")
        },
        "ttft_s": {"p50": _percentile(out["ttft"], 50), "p99": _percentile(out["ttft"], 99)},
        "errors": len(out["errors"]),
        "error_examples": out["errors"][:3],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "command": "python bench/serve.py " + " ".join(sys.argv[1:]),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    lat = report["latency_s"]
    print(
        f"{args.clients} clients, {wall:.0f} s: {report['requests_per_s']} req/s, "
        f"{report['completion_tokens_per_s']} tok/s, chat p50 {lat['chat']['p50']}, "
        f"stream TTFT p50 {report['ttft_s']['p50']}, {report['errors']} errors",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
