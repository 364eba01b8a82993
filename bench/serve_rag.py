"""``ragtune serve``'s RAG half under load: 16 concurrent official-SDK clients on loopback,
for a bounded time each, first ``vector_stores.search`` then ``responses.create`` with the
``file_search`` tool. Prints one JSON object (requests, errors, requests/s, p50/p99 latency
per phase), then a one-line summary.

    python bench/serve_rag.py                       # starts a server on the default models
    python bench/serve_rag.py --url http://127.0.0.1:8000/v1 --key KEY   # an existing server

The corpus is the first ``--docs`` documents of SciFact (../shared/data); each client asks
SciFact claims as queries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

KEY = "sk-bench"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the ``ceil(q / 100 * n)``-th smallest of ``n`` values."""
    ranked = sorted(values)
    k = max(0, min(len(ranked) - 1, math.ceil(q / 100 * len(ranked)) - 1))
    return ranked[k]


def shared_data() -> Path:
    env = os.environ.get("RAGTUNE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def load_corpus(n_docs: int, n_queries: int) -> tuple[list[tuple[str, str]], list[str]]:
    base = shared_data() / "scifact"
    docs = []
    with open(base / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            docs.append((f"{r['_id']}.txt", f"{r.get('title', '')}\n\n{r['text']}"))
            if len(docs) >= n_docs:
                break
    queries = []
    with open(base / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            queries.append(json.loads(line)["text"])
            if len(queries) >= n_queries:
                break
    return docs, queries


def start_server(home: Path, models_home: Path) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """``ragtune serve`` (one worker) on a fresh data directory that borrows the converted
    models and ONNX exports of ``models_home``, so nothing is converted again."""
    home.mkdir(parents=True)
    for sub in ("models", "cache"):
        if (models_home / sub).exists():
            (home / sub).symlink_to((models_home / sub).resolve())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAGTUNE_HOME": str(home), "RAGTUNE_API_KEYS": KEY}
    cmd = [sys.executable, "-m", "ragtune.cli", "serve", "--port", str(port)]
    procs = [subprocess.Popen(cmd, env=env, stdout=sys.stderr)]
    return f"http://127.0.0.1:{port}/v1", procs


def wait_ready(client: Any, deadline_s: float = 300) -> None:
    import openai

    end = time.time() + deadline_s
    while True:
        try:
            client.models.list()
            return
        except openai.APIConnectionError:
            if time.time() > end:
                raise
            time.sleep(0.5)


def run_phase(
    make_client: Any, call: Any, queries: list[str], clients: int, seconds: float
) -> dict[str, Any]:
    """``clients`` threads, each with its own SDK client, calling ``call(client, query)``
    until ``seconds`` have passed."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(i: int) -> None:
        client = make_client()
        n = i
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                call(client, queries[n % len(queries)])
            except Exception as e:  # counted and reported, never hidden
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
            else:
                with lock:
                    latencies.append(time.perf_counter() - t0)
            n += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_s": round(percentile(latencies, 50), 3) if latencies else None,
        "p99_s": round(percentile(latencies, 99), 3) if latencies else None,
        "mean_s": round(statistics.fmean(latencies), 3) if latencies else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", help="an existing server's base URL (default: start one)")
    ap.add_argument("--key", default=KEY)
    ap.add_argument(
        "--models-home",
        type=Path,
        default=Path(os.environ.get("RAGTUNE_HOME", Path.home() / ".ragtune")),
        help="data directory whose converted models the started server reuses",
    )
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30.0, help="per phase")
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--max-output-tokens", type=int, default=16)
    args = ap.parse_args()

    import openai

    docs, queries = load_corpus(args.docs, 200)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url
        if url is None:
            url, procs = start_server(Path(tmp) / "home", args.models_home)
        try:

            def make_client() -> Any:
                return openai.OpenAI(base_url=url, api_key=args.key, max_retries=0, timeout=600)

            admin = make_client()
            wait_ready(admin)
            folder = Path(tmp) / "docs"
            folder.mkdir()
            for name, text in docs:
                (folder / name).write_text(text, encoding="utf-8")
            t0 = time.perf_counter()
            store = admin.vector_stores.create(name="bench")
            with contextlib.ExitStack() as stack:
                handles = [stack.enter_context(open(folder / n, "rb")) for n, _ in docs]
                batch = admin.vector_stores.file_batches.upload_and_poll(
                    store.id, files=handles, poll_interval_ms=500
                )
            ingest_s = time.perf_counter() - t0
            model = admin.models.list().data[0].id
            tool = {"type": "file_search", "vector_store_ids": [store.id]}

            def search(client: Any, q: str) -> None:
                page = client.vector_stores.search(store.id, query=q, max_num_results=5)
                if not page.data:
                    raise RuntimeError("no search results")

            def respond(client: Any, q: str) -> None:
                r = client.responses.create(
                    model=model,
                    input=q,
                    tools=[tool],
                    max_output_tokens=args.max_output_tokens,
                    temperature=0,
                    store=False,
                )
                if r.status not in ("completed", "incomplete"):
                    raise RuntimeError(f"response status {r.status}")

            report = {
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                },
                "clients": args.clients,
                "seconds_per_phase": args.seconds,
                "documents": len(docs),
                "ingest": {
                    "files_completed": batch.file_counts.completed,
                    "files_failed": batch.file_counts.failed,
                    "wall_s": round(ingest_s, 1),
                },
                "search": run_phase(make_client, search, queries, args.clients, args.seconds),
                "responses_file_search": run_phase(
                    make_client, respond, queries, args.clients, args.seconds
                ),
            }
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=120)
    print(json.dumps(report, indent=2))
    s, r = report["search"], report["responses_file_search"]
    print(
        f"{args.clients} clients: search {s['requests_per_s']} req/s p50 {s['p50_s']}s "
        f"p99 {s['p99_s']}s ({s['errors']} errors); responses+file_search "
        f"{r['requests_per_s']} req/s p50 {r['p50_s']}s p99 {r['p99_s']}s ({r['errors']} errors)",
        file=sys.stderr,
    )
    return 0 if s["errors"] == 0 and r["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
