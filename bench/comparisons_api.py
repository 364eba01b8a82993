"""A comparison through ``POST /v1/comparisons`` against the same comparison run by
``ragtune compare``: the wall time of each, the service's overhead (uploads, the job queue,
copying the inputs, storing the report) and whether both give the same figures. Prints one
JSON object, then a one-line summary.

    python bench/comparisons_api.py --arms base,rag --max-questions 8

The data is the demo's fictional world (``ragtune demo``'s generator, seed 0): its documents,
its held-out questions and its training examples. A fresh ``ragtune serve`` (one worker) on
the default models runs the API side; it borrows the converted models of ``RAGTUNE_HOME``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_rag import KEY, start_server  # a sibling bench script


def world_files(root: Path) -> dict[str, Path]:
    """The demo world, its documents flattened to file names (as uploads are), the questions'
    gold document ids renamed to match."""
    from ragtune.evaluate.world import make_world, write_world

    files = write_world(make_world(seed=0), root / "world")
    flat = root / "docs"
    flat.mkdir()
    for p in sorted(files["docs"].rglob("*.md")):
        (flat / p.name).write_bytes(p.read_bytes())
    rows = [json.loads(x) for x in files["questions"].read_text().splitlines() if x.strip()]
    for r in rows:
        r["doc_id"] = Path(r["doc_id"]).name
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"docs": flat, "questions": questions, "train": files["train"]}


def via_api(url: str, files: dict[str, Path], body: dict[str, Any]) -> dict[str, Any]:
    import requests

    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {KEY}"

    def put(path: Path, purpose: str) -> str:
        r = http.post(
            f"{url}/files",
            files={"file": (path.name, path.read_bytes())},
            data={"purpose": purpose},
        )
        r.raise_for_status()
        return str(r.json()["id"])

    t0 = time.perf_counter()
    docs = [put(p, "assistants") for p in sorted(files["docs"].iterdir())]
    questions = put(files["questions"], "assistants")
    train = put(files["train"], "fine-tune")
    upload_s = time.perf_counter() - t0
    request = {
        **body,
        "documents": {"file_ids": docs},
        "questions": {"file_id": questions},
        "training": {"type": "file", "file_id": train},
    }
    t0 = time.perf_counter()
    r = http.post(f"{url}/comparisons", json=request)
    r.raise_for_status()
    cid = r.json()["id"]
    stages: list[list[Any]] = []
    while True:
        c = http.get(f"{url}/comparisons/{cid}").json()
        stage = (c.get("progress") or {}).get("stage") or c["status"]
        if not stages or stages[-1][0] != stage:
            stages.append([stage, round(time.perf_counter() - t0, 1)])
        if c["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    if c["status"] != "succeeded":
        raise SystemExit(f"comparison {c['status']}: {c['error']}")
    results = http.get(f"{url}/comparisons/{cid}/results").json()
    return {"upload_s": round(upload_s, 1), "wall_s": round(wall, 1), "stages": stages,
            "results": results}  # fmt: skip


def via_cli(files: dict[str, Path], body: dict[str, Any], out: Path, home: Path) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "ragtune.cli", "compare",
        "--docs", str(files["docs"]), "--questions", str(files["questions"]),
        "--train", str(files["train"]), "--out", str(out),
        "--arms", ",".join(body["arms"]), "--max-questions", str(body["max_questions"]),
        "--backend", "onnx",
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "RAGTUNE_HOME": str(home)},
                   stdout=sys.stderr)  # fmt: skip
    wall = time.perf_counter() - t0
    results = json.loads((out / "results.json").read_text())
    return {"wall_s": round(wall, 1), "results": results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arms", default="base,rag")
    ap.add_argument("--max-questions", type=int, default=8)
    args = ap.parse_args()
    from ragtune.config import ragtune_home

    models_home = ragtune_home()
    body = {"arms": args.arms.split(","), "max_questions": args.max_questions}
    with tempfile.TemporaryDirectory(prefix="ragtune-cmp-bench-") as tmp:
        root = Path(tmp)
        files = world_files(root)
        url, procs = start_server(root / "home", models_home)
        try:
            import requests

            deadline = time.time() + 300
            while True:
                try:
                    requests.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"})
                    break
                except requests.ConnectionError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.5)
            api = via_api(url, files, body)
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=120)
        cli = via_cli(files, body, root / "cli-report", root / "home")
    same = {
        arm: api["results"]["arms"][arm]["f1"] == cli["results"]["arms"][arm]["f1"]
        for arm in body["arms"]
    }
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "settings": body,
        "n_test": api["results"]["data"]["n_test"],
        "api": {k: v for k, v in api.items() if k != "results"},
        "cli_wall_s": cli["wall_s"],
        "overhead_s": round(api["wall_s"] - cli["wall_s"], 1),
        "f1": {arm: api["results"]["arms"][arm]["f1"] for arm in body["arms"]},
        "same_f1_as_cli": same,
    }
    print(json.dumps(out, indent=2))
    print(
        f"comparison of {','.join(body['arms'])} on {out['n_test']} questions: API "
        f"{api['wall_s']} s (+{api['upload_s']} s uploads) vs ragtune compare {cli['wall_s']} s; "
        f"same F1 as the CLI: {all(same.values())}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
