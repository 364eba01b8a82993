"""Peak memory of ``ragtune ingest`` against file size and file count.

Each case ingests generated English-like text (fixed seed) into a fresh knowledge base
in a scratch ``RAGTUNE_HOME`` (after an unmeasured warm-up run that exports the embedder
to ONNX), in its own child process, and reads that child's peak resident set size from
``os.wait4``. Cases: one file of 1, 10 and 50 MiB, and 10,000 files of 2 KiB; ``tiny``
(one 2 KiB file) is the baseline, the models loaded and little else, so "above the
models" is ``peak - tiny``.

``--src`` runs another checkout's code (e.g. the commit before streaming ingest), so the
same script measures before and after. Prints JSON and a one-line summary.

``--embedder small`` (the default) uses the default embedder's tokenizer (so chunking,
token and chunk counts are exactly those of all-MiniLM-L6-v2) with a 2-layer, hidden-64
BERT in place of its weights: a 50 MiB file is about 70,000 chunks, which MiniLM itself
embeds in hours on two loaded cores, and the memory in question is the pipeline's, not
the model's. ``--embedder default`` measures the real one (run it on small cases).

    python bench/memory.py [--src PATH/src] [--cases tiny,1,10,50,small] [--embedder small]

``--keywords 100000,1000000`` measures the keyword (BM25) index alone instead, at
synthetic scale: chunks of ``--words`` (default 100) words drawn from a Zipf
distribution (exponent 1.1, fixed seed) over a million made-up terms, added in groups of
``--group`` chunks (ingest's step; 1,024 there) and saved, in one child process ("build");
then opened and queried with 20 three-word queries in another ("query"); "import" is a
child that only imports ragtune's retrieve package (the floor). ``--src`` picks the code,
as above. The text is synthetic: what is measured is memory against chunk count.

``--validate 200`` measures ``ragtune validate FILE --json`` (the default model's
tokenizer) on a generated chat JSONL of about that many MiB: examples of about 1 KiB
(English-like text, fixed seed), every 1,000th line broken JSON; and ``--validate-base``
a 1 MiB file of the same kind (the floor: tokenizer loaded, little else).

``--train-data 50`` measures the data step of a training run (``ragtune tune``'s step 1:
read, check and tokenize the training file with the default model's tokenizer) in a child
process, on a valid generated chat JSONL of about that many MiB and on 1 MiB (the floor),
with the code of ``--src``: the streaming ``tune.tokens.Encoder`` where that code has it,
else ``load_data`` then ``encode`` (the code before it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 2**20
SMALL_FILES = 10_000
SMALL_BYTES = 2048


def _words(rng: random.Random) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    return ["".join(rng.choices(letters, weights, k=rng.randint(2, 9))) for _ in range(5000)]


def english_like(rng: random.Random, words: list[str], size: int) -> str:
    """About ``size`` bytes of sentences (5-20 words) in paragraphs (2-6 sentences)."""
    parts: list[str] = []
    total = 0
    while total < size:
        para = []
        for _ in range(rng.randint(2, 6)):
            s = " ".join(rng.choices(words, k=rng.randint(5, 20)))
            para.append(s[0].upper() + s[1:] + ".")
        text = " ".join(para)
        parts.append(text)
        total += len(text) + 2
    return "\n\n".join(parts)[:size]


def make_case(case: str, folder: Path) -> Path:
    """Write the case's input under ``folder``; returns the path to ingest."""
    rng = random.Random(0)
    words = _words(rng)
    folder.mkdir(parents=True, exist_ok=True)
    if case == "small":
        root = folder / "many"
        for i in range(SMALL_FILES):
            sub = root / f"{i // 1000:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"doc{i:05d}.txt").write_text(english_like(rng, words, SMALL_BYTES))
        return root
    size = SMALL_BYTES if case == "tiny" else int(case) * MiB
    path = folder / f"{case}.txt"
    with open(path, "w") as fh:
        left = size
        while left > 0:  # written in 1 MiB pieces so this script stays small itself
            piece = english_like(rng, words, min(MiB, left))
            fh.write(piece + ("\n\n" if left > MiB else ""))
            left -= len(piece) + 2
    return path


def small_embedder(folder: Path) -> Path:
    """The default embedder's tokenizer and sentence-transformers layout around a tiny,
    randomly initialised (seed 0) BERT with the same vocabulary."""
    import torch
    from transformers import BertConfig, BertModel

    from ragtune.models import default_embedder_path

    source = default_embedder_path()
    folder.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, folder / f.name)
    real = json.loads((source / "config.json").read_text())
    config = BertConfig(
        vocab_size=real["vocab_size"],
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=real["max_position_embeddings"],
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    pooling["word_embedding_dimension"] = 64
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def _status_mib(pid: int) -> dict[str, float]:
    """VmHWM (peak so far) and VmRSS of a live process, in MiB, from /proc."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def _groups_written(kb: Path) -> int:
    """Appends to the chunks table so far (each ingest group of chunks is one version)."""
    return max(0, len(list(kb.glob("lance-*/chunks.lance/_versions/*.manifest"))) - 1)


def _wait(pid: int, kb: Path, sample: float, log: Path) -> tuple[int, Any]:
    """``os.wait4`` for ``pid``; with ``sample`` > 0, every ``sample`` seconds append the
    child's VmHWM/VmRSS and progress to ``log`` (and stderr), so a run stopped early still
    leaves its high-water mark so far."""
    t0 = time.perf_counter()
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG if sample > 0 else 0)
        if done:
            return status, usage
        time.sleep(sample)
        row = {"seconds": round(time.perf_counter() - t0), **_status_mib(pid)}
        row["groups_written"] = _groups_written(kb)
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), file=sys.stderr, flush=True)


def run_case(
    case: str, src: Path, work: Path, real_home: Path, embedder: str, sample: float = 0.0
) -> dict[str, Any]:
    home = work / "home"
    target = make_case(case, work / f"in-{case}")
    max_mb = max(60, os.path.getsize(target) // MiB + 10) if target.is_file() else 60
    env = {**os.environ, "RAGTUNE_HOME": str(home), "PYTHONPATH": str(src)}
    argv = [
        sys.executable,
        "-m",
        "ragtune.cli",
        "ingest",
        str(target),
        "--kb",
        f"bench-{case}",
        "--max-file-mb",
        str(max_mb),
        "--embedder",
        embedder,
        "--json",
    ]
    t0 = time.perf_counter()
    with open(work / f"out-{case}.json", "wb") as out, open(work / f"err-{case}", "wb") as err:
        pid = os.posix_spawn(
            sys.executable,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
            ],
        )
        status, usage = _wait(pid, home / "kb" / f"bench-{case}", sample, work / f"samples-{case}")
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    result: dict[str, Any] = {
        "case": case,
        "input_bytes": sum(f.stat().st_size for f in [target] if f.is_file())
        or sum(f.stat().st_size for f in target.rglob("*.txt")),
        "files": 1 if target.is_file() else SMALL_FILES,
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is in KiB on Linux
        "seconds": round(seconds, 1),
        "exit_code": code,
    }
    if code == 0:
        report = json.loads((work / f"out-{case}.json").read_text())
        result["chunks"] = report["chunks"]
    else:
        result["stderr_tail"] = (work / f"err-{case}").read_text(errors="replace")[-500:]
    shutil.rmtree(work / f"in-{case}", ignore_errors=True)
    shutil.rmtree(home / "kb", ignore_errors=True)
    return result


def synthetic_chunks(n: int, words: int, group: int, seed: int = 0) -> Any:
    """Groups of ``group`` Chunks of ``words`` Zipf-drawn terms each, ``n`` in all."""
    import numpy as np

    from ragtune.types import Chunk

    rng = np.random.default_rng(seed)
    for start in range(0, n, group):
        size = min(group, n - start)
        ids = np.minimum(rng.zipf(1.1, size=(size, words)), 1_000_000)  # (size, words)
        chunks = []
        for i, row in enumerate(ids.tolist()):
            text = " ".join(f"t{w}" for w in row)
            doc = f"doc{(start + i) // 4}"
            chunks.append(Chunk(f"{doc}#{(start + i) % 4}", doc, (start + i) % 4, text, 0, 1))
        yield chunks


def keyword_child(phase: str, n: int, folder: Path, words: int, group: int) -> None:
    """The measured work of one keyword case, in this (child) process; works with the
    keyword index before (ragtune.retrieve.store.KeywordIndex, whole in memory) and after
    (ragtune.retrieve.keywords.KeywordIndex, segments on disk)."""
    if phase == "import":
        import ragtune.retrieve.store  # noqa: F401

        return
    try:
        from ragtune.retrieve.keywords import KeywordIndex

        segmented = True
    except ImportError:
        from ragtune.retrieve.store import KeywordIndex  # type: ignore[no-redef,attr-defined]

        segmented = False
    segs = folder / "keyword-segments"
    if phase == "build":
        index: Any = KeywordIndex.empty(segs) if segmented else KeywordIndex.empty()
        for chunks in synthetic_chunks(n, words, group):
            grown = index.add(chunks)
            index = grown if grown is not None else index
        index.save(folder / "snapshot")
        return
    index = (
        KeywordIndex.load(folder / "snapshot", segs)
        if segmented
        else KeywordIndex.load(folder / "snapshot")
    )
    search = index.top_k if segmented else index.bm25.top_k
    import numpy as np

    rng = np.random.default_rng(1)
    times = []
    for _ in range(20):
        query = " ".join(f"t{w}" for w in rng.integers(20, 2000, size=3))
        t0 = time.perf_counter()
        rows, _ = search(query, 10)
        times.append(time.perf_counter() - t0)
        assert len(rows) > 0
    print(json.dumps({"query_ms_median": round(1000 * sorted(times)[10], 1)}))


def run_keyword_case(phase: str, n: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(args.src.resolve())}
    argv = [sys.executable, __file__, "--child", phase, str(n), str(folder)]
    argv += ["--words", str(args.words), "--group", str(args.group)]
    t0 = time.perf_counter()
    with open(folder.parent / f"out-{phase}-{n}", "wb") as out:
        pid = os.posix_spawn(
            sys.executable, argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1)]
        )
        _, status, usage = os.wait4(pid, 0)
    result: dict[str, Any] = {
        "phase": phase,
        "chunks": n,
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "exit_code": os.waitstatus_to_exitcode(status),
    }
    text = (folder.parent / f"out-{phase}-{n}").read_text().strip()
    if text:
        result.update(json.loads(text.splitlines()[-1]))
    if phase == "build":
        result["index_mib_on_disk"] = round(
            sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / MiB, 1
        )
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def keywords_main(args: argparse.Namespace) -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="ragtune-kwbench-") as tmp:
        results.append(run_keyword_case("import", 0, args, Path(tmp) / "none"))
        for n in (int(x) for x in args.keywords.split(",")):
            folder = Path(tmp) / f"kb-{n}"
            folder.mkdir()
            results.append(run_keyword_case("build", n, args, folder))
            results.append(run_keyword_case("query", n, args, folder))
            shutil.rmtree(folder)
    meta = {"label": args.label, "src": str(args.src), "words": args.words, "group": args.group}
    print(json.dumps({**meta, "keywords": results}, indent=2))
    summary = ", ".join(
        f"{r['phase']} {r['chunks']:,}: {r['peak_rss_mib']:.0f} MiB" for r in results
    )
    print(f"peak RSS of the keyword index ({args.label or args.src}): {summary}", file=sys.stderr)
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


def write_chat_jsonl(path: Path, size: int, broken: bool = True) -> int:
    """About ``size`` bytes of chat examples (every 1,000th line not JSON unless not
    ``broken``); returns lines."""
    rng = random.Random(0)
    words = _words(rng)
    written = lines = 0
    with open(path, "w") as fh:
        while written < size:
            lines += 1
            if broken and lines % 1000 == 0:
                line = '{"messages": [broken'
            else:
                question = english_like(rng, words, 200)
                answer = english_like(rng, words, 800)
                messages = [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
                line = json.dumps({"messages": messages})
            fh.write(line + "\n")
            written += len(line) + 1
    return lines


def measure_child(
    argv: list[str], src: Path, out_json: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``argv`` with ragtune from ``src``; its JSON stdout, and its peak RSS, seconds and
    exit code."""
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    t0 = time.perf_counter()
    with open(out_json, "wb") as out:
        pid = os.posix_spawn(
            sys.executable, argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1)]
        )
        _, status, usage = os.wait4(pid, 0)
    report = json.loads(out_json.read_text() or "{}")
    return report, {
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "exit_code": os.waitstatus_to_exitcode(status),
    }


def validate_main(args: argparse.Namespace) -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="ragtune-valbench-") as tmp:
        for mib in (1, args.validate):
            path = Path(tmp) / f"train-{mib}.jsonl"
            lines = write_chat_jsonl(path, mib * MiB)
            argv = [sys.executable, "-m", "ragtune.cli", "validate", str(path), "--json"]
            report, measured = measure_child(argv, args.src, Path(tmp) / "out.json")
            result = {
                "file_mib": round(path.stat().st_size / MiB, 1),
                "lines": lines,
                **measured,  # exit_code 1: the file has errors
                "examples": report.get("examples"),
                "errors_listed": len(report.get("errors", [])),
                "errors_total": sum(report.get("error_counts", {}).values())
                or len(report.get("errors", [])),
            }
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
            path.unlink()
    print(json.dumps({"label": args.label, "src": str(args.src), "validate": results}, indent=2))
    summary = ", ".join(f"{r['file_mib']} MiB: {r['peak_rss_mib']:.0f} MiB" for r in results)
    print(f"peak RSS of ragtune validate ({args.label or args.src}): {summary}", file=sys.stderr)
    return 0


TRAIN_DATA_CHILD = """
import json, sys
from transformers import AutoTokenizer
from ragtune.models import resolve_lm
from ragtune.tune import data as d
tokenizer = AutoTokenizer.from_pretrained(str(resolve_lm("default")))
try:
    from ragtune.tune.tokens import Encoder
except ImportError:  # the code before the streaming data step
    loaded = d.load_data(sys.argv[1])
    seqs = d.encode(loaded.examples, tokenizer, 2048)[0]
else:
    encoder = Encoder(tokenizer, 2048)
    loaded = d.load_data(sys.argv[1], encoder=encoder)
    seqs = encoder.result()[0]
print(json.dumps({"sequences": len(seqs), "errors": len(loaded.errors)}))
"""


def train_data_main(args: argparse.Namespace) -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="ragtune-trainbench-") as tmp:
        for mib in (1, args.train_data):
            path = Path(tmp) / f"train-{mib}.jsonl"
            lines = write_chat_jsonl(path, mib * MiB, broken=False)
            argv = [sys.executable, "-c", TRAIN_DATA_CHILD, str(path)]
            report, measured = measure_child(argv, args.src, Path(tmp) / "out.json")
            result = {
                "file_mib": round(path.stat().st_size / MiB, 1),
                "lines": lines,
                **measured,
                **report,
            }
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)
            path.unlink()
    print(json.dumps({"label": args.label, "src": str(args.src), "train_data": results}, indent=2))
    summary = ", ".join(f"{r['file_mib']} MiB: {r['peak_rss_mib']:.0f} MiB" for r in results)
    label = args.label or args.src
    print(f"peak RSS of the training data step ({label}): {summary}", file=sys.stderr)
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).parent.parent / "src")
    parser.add_argument("--cases", default="tiny,1,10,50,small")
    parser.add_argument("--label", default="", help="a name for this run in the JSON")
    parser.add_argument("--embedder", choices=["small", "default"], default="small")
    parser.add_argument(
        "--sample",
        type=float,
        default=0.0,
        help="every SECONDS, log the child's peak RSS so far and groups written (long runs)",
    )
    parser.add_argument("--keywords", default="", help="chunk counts: measure the BM25 index")
    parser.add_argument("--words", type=int, default=100, help="words per synthetic chunk")
    parser.add_argument("--group", type=int, default=1024, help="chunks per add()")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--validate", type=int, default=0, help="MiB of JSONL to validate")
    parser.add_argument(
        "--train-data", type=int, default=0, help="MiB of JSONL through training's data step"
    )
    args = parser.parse_args()
    if args.child:
        phase, n, folder = args.child
        keyword_child(phase, int(n), Path(folder), args.words, args.group)
        return 0
    if args.keywords:
        return keywords_main(args)
    if args.validate:
        return validate_main(args)
    if args.train_data:
        return train_data_main(args)
    real_home = Path(os.environ.get("RAGTUNE_HOME", Path.home() / ".ragtune")).expanduser()
    results = []
    with tempfile.TemporaryDirectory(prefix="ragtune-membench-") as tmp:
        embedder = "default"
        if args.embedder == "small":
            embedder = str(small_embedder(Path(tmp) / "small-embedder"))
        home = Path(tmp) / "home"
        home.mkdir()
        if embedder == "default" and (real_home / "cache").exists():
            (home / "cache").symlink_to(real_home / "cache")
        # Unmeasured warm-up: exports the embedder to ONNX once, outside the figures.
        run_case("tiny", args.src.resolve(), Path(tmp), real_home, embedder)
        for case in args.cases.split(","):
            results.append(
                run_case(
                    case.strip(), args.src.resolve(), Path(tmp), real_home, embedder, args.sample
                )
            )
            print(json.dumps(results[-1]), file=sys.stderr)
    base = next((r["peak_rss_mib"] for r in results if r["case"] == "tiny"), None)
    for r in results:
        if base is not None:
            r["above_tiny_mib"] = round(r["peak_rss_mib"] - base, 1)
    meta = {"label": args.label, "src": str(args.src), "embedder": args.embedder}
    print(json.dumps({**meta, "results": results}, indent=2))
    summary = ", ".join(f"{r['case']}: {r['peak_rss_mib']:.0f} MiB" for r in results)
    print(f"peak RSS of ragtune ingest ({args.label or args.src}): {summary}", file=sys.stderr)
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
