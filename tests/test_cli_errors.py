"""Errors a user can act on: OS errors, config errors and unfinished runs, each reported as
one line (plus an optional hint) with a non-zero exit status and no traceback.

The OS-error cases run ``ragtune`` in a subprocess. Permissions are real: when the tests
run as root (as in CI), the child drops every capability first (``setpriv``), so root is
bound by file modes like any user and a read-only folder really refuses writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ragtune.cli import main
from ragtune.config import load_config
from ragtune.errors import RagtuneError

SRC = Path(__file__).resolve().parents[1] / "src"
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def unprivileged() -> list[str]:
    """A command prefix that makes file permissions apply to the child."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop the capabilities")
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all"]


def ragtune(home: Path, *args: str, drop: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAGTUNE_HOME": str(home), "PYTHONPATH": str(SRC)}
    cmd = [*(unprivileged() if drop else []), sys.executable, "-m", "ragtune.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single line on stderr, asserting there is exactly one and no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def read_only_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    # The mechanism itself: the child really cannot write here.
    probe = subprocess.run(
        [*unprivileged(), sys.executable, "-c", f"open({str(home / 'x')!r}, 'w')"],
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0 and "PermissionError" in probe.stderr
    yield home
    home.chmod(0o755)


def test_ingest_into_read_only_home(read_only_home: Path, tmp_path: Path, tiny_embedder: Path):
    doc = tmp_path / "a.txt"
    doc.write_text("The sea is blue.\n")
    proc = ragtune(
        read_only_home, "ingest", str(doc), "--kb", "x", "--embedder", str(tiny_embedder),
        "--backend", "torch", drop=True,
    )  # fmt: skip
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert line.startswith(f"error: Permission denied: {read_only_home / 'kb'} — ")
    assert f"RAGTUNE_HOME={read_only_home}: set it to a writable folder" in line
    assert list(read_only_home.iterdir()) == []  # nothing half-written


@pytest.mark.parametrize("command", ["ask", "validate"])
def test_default_model_in_read_only_home(read_only_home: Path, tmp_path: Path, command: str):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(CHAT) + "\n")
    args = ["ask", "What is it?"] if command == "ask" else ["validate", str(data)]
    proc = ragtune(read_only_home, *args, drop=True)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert line.startswith(f"error: Permission denied: {read_only_home / 'models'} — ")
    assert list(read_only_home.iterdir()) == []


def test_home_is_a_file(tmp_path: Path, tiny_embedder: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a folder")
    doc = tmp_path / "a.txt"
    doc.write_text("The sea is blue.\n")
    proc = ragtune(home, "ingest", str(doc), "--kb", "x", "--embedder", str(tiny_embedder))
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert line.startswith(f"error: Not a directory: {home / 'kb' / 'x'} — a part of that path")
    assert home.read_text() == "not a folder"


@pytest.mark.parametrize("where", ["file", "read-only"])
def test_tune_out_unusable(tmp_path: Path, tiny_lm: Path, where: str) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text((json.dumps(CHAT) + "\n") * 10)
    if where == "file":
        out = tmp_path / "out"
        out.write_text("precious")
        expected = f"error: Not a directory: {out} — a part of that path is a file"
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
        out = parent / "run"
        expected = f"error: Permission denied: {out}"
    args = ["tune", "--data", str(data), "--method", "lora", "--model", str(tiny_lm)]
    proc = ragtune(tmp_path / "home", *args, "--out", str(out), drop=where == "read-only")
    assert proc.returncode == 1, proc.stderr
    assert one_error_line(proc).startswith(expected)
    if where == "file":
        assert out.read_text() == "precious"
    else:
        assert not out.exists()
        parent.chmod(0o755)


# --- config.toml ------------------------------------------------------------------------


def write_config(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(text)
    return path


def test_broken_config_still_gives_help(
    ragtune_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(ragtune_home, "[ingest\nchunk_tokens = 3")
    with pytest.raises(SystemExit) as exit_:
        main(["ingest", "--help"])
    assert exit_.value.code == 0
    assert "--chunk-tokens" in capsys.readouterr().out
    assert main(["kb", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Config file {path} is not valid TOML: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[ingest]\nchunk_tokens = "big"',
            "ingest.chunk_tokens in {} must be an integer, got 'big'",
        ),
        ("[ingest]\nchunk_tokens = true", "ingest.chunk_tokens in {} must be an integer, got True"),
        ('[retrieve]\nfusion = "sum"', "retrieve.fusion in {} must be one of 'rrf', 'convex'"),
        ("[retrieve]\nbm25_k1 = -1.0", "retrieve.bm25_k1 in {} must not be negative, got -1.0"),
        ("[generate]\nmodle = 'x'", "Unknown setting(s) modle in [generate] of {}"),
        ("[serve]\nport = 1", "Unknown section(s) serve in {}"),
        ("ingest = 3", "[ingest] in {} is not a table"),
        ('[generate]\ndtype = "fp16"', "generate.dtype in {} must be one of 'auto', 'float32'"),
    ],
)
def test_config_values_are_checked(ragtune_home: Path, text: str, message: str) -> None:
    path = write_config(ragtune_home, text)
    with pytest.raises(RagtuneError) as e:
        load_config()
    assert e.value.message.startswith(message.format(path))


def test_config_is_wired(ragtune_home: Path) -> None:
    from ragtune.cli import build_parser

    write_config(
        ragtune_home,
        "[ingest]\nchunk_tokens = 200\nmax_file_mb = 5\nbatch_size = 4\n"
        '[retrieve]\nk = 7\nbm25_k1 = 1.2\nbm25_b = 0.5\nfusion = "rrf"\nrrf_k = 20\n'
        '[generate]\nmodel = "/m"\nmax_new_tokens = 9\nbatch_size = 3\ndevice = "cpu"\n'
        'dtype = "float32"\n',
    )
    cfg = load_config()
    assert cfg.ingest.max_file_mb == 5.0 and isinstance(cfg.ingest.max_file_mb, float)
    parser = build_parser(cfg)
    search = parser.parse_args(["search", "q", "--kb", "x"])
    assert (search.k, search.bm25_k1, search.bm25_b, search.fusion, search.rrf_k) == (
        7, 1.2, 0.5, "rrf", 20,
    )  # fmt: skip
    ask = parser.parse_args(["ask", "q"])
    assert (ask.k, ask.model, ask.max_new_tokens, ask.batch_size, ask.dtype) == (
        5, "/m", 9, 3, "float32",
    )  # fmt: skip
    ev = parser.parse_args(["eval", "retrieval", "--corpus", "c", "--queries", "q", "--qrels", "r"])
    assert (ev.fusion, ev.rrf_k, ev.device) == ("rrf", 20, "cpu")
    tune = parser.parse_args(["tune", "--data", "d", "--method", "lora", "--out", "o"])
    assert (tune.model, tune.device, tune.dtype) == ("/m", "cpu", "float32")
    assert parser.parse_args(["validate", "f", "--base", "/b"]).model == "/b"  # old spelling
    ingest = parser.parse_args(["ingest", "p", "--kb", "x"])
    assert ingest.ingest_config.chunk_tokens == 200 and ingest.chunk_tokens is None


def test_ingest_uses_config_for_new_bases(
    ragtune_home: Path, tmp_path: Path, tiny_embedder: Path
) -> None:
    write_config(
        ragtune_home,
        f'[ingest]\nembedder = "{tiny_embedder}"\nbackend = "torch"\nchunk_tokens = 8\n'
        "chunk_overlap = 2\nmax_file_mb = 0.00017\n",
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The sea is blue and the waves are loud. " * 4)
    (docs / "big.txt").write_text("x " * 100)
    assert main(["ingest", str(docs), "--kb", "c", "--json"]) == 0
    manifest = json.loads((ragtune_home / "kb" / "c" / "manifest.json").read_text())
    assert manifest["config"] == {
        "embedder": str(tiny_embedder),
        "backend": "torch",
        "chunk_tokens": 8,
        "chunk_overlap": 2,
    }
    assert manifest["counts"]["documents"] == 1  # big.txt is over max_file_mb


def test_compare_and_make_qa_read_config(
    ragtune_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import ragtune.evaluate.compare as compare

    write_config(
        ragtune_home,
        '[generate]\nmodel = "/no/such/model"\nbatch_size = 7\ndevice = "cpu"\n'
        'dtype = "float32"\n[ingest]\nchunk_tokens = 123\n[retrieve]\nmode = "bm25"\n',
    )
    seen = []

    def fake_run(settings, inputs, out, say):  # type: ignore[no-untyped-def]
        seen.append(settings)
        return {"arms": {}, "verdict": {"text": ""}}

    monkeypatch.setattr(compare, "run_compare", fake_run)
    questions = tmp_path / "q.jsonl"
    questions.write_text("")
    assert main(["compare", "--questions", str(questions), "--out", str(tmp_path / "r")]) == 0
    (s,) = seen
    assert (s.model, s.batch_size, s.device, s.dtype) == ("/no/such/model", 7, "cpu", "float32")
    assert (s.chunk_tokens, s.mode, s.embedder, s.chunk_overlap) == (123, "bm25", None, None)
    assert (
        main(["compare", "--questions", str(questions), "--out", "r", "--gen-batch-size", "2"]) == 0
    )
    assert seen[-1].batch_size == 2  # a flag wins
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Zorbland's capital is Vetrin.")
    capsys.readouterr()
    out = str(tmp_path / "qa.jsonl")
    assert main(["make-qa", str(docs), "--out", out, "--method", "model"]) != 0
    assert "/no/such/model" in capsys.readouterr().err  # the configured model was used


@pytest.mark.parametrize(
    ("command", "text", "message"),
    [
        (
            "compare",
            '[generate]\nbatch_size = "big"',
            "generate.batch_size in {} must be an integer",
        ),
        (
            "compare",
            "[ingest]\nchunk_overlap = 1.5",
            "ingest.chunk_overlap in {} must be an integer",
        ),
        ("make-qa", "[generate]\nmodel = 3", "generate.model in {} must be a string, got 3"),
        ("make-qa", '[generate]\ndevice = ["cpu"]', "generate.device in {} must be a string"),
    ],
)
def test_compare_and_make_qa_report_bad_config(
    ragtune_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    text: str,
    message: str,
) -> None:
    path = write_config(ragtune_home, text)
    argv = {
        "compare": ["compare", "--questions", str(tmp_path / "q.jsonl"), "--out", str(tmp_path)],
        "make-qa": ["make-qa", str(tmp_path), "--out", str(tmp_path / "qa.jsonl")],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(path)), err
    assert "Traceback" not in err


# --- unfinished runs --------------------------------------------------------------------


@pytest.mark.parametrize("status", ["interrupted", "running"])
def test_unfinished_run_is_named_as_such(
    tmp_path: Path, status: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    manifest = {"kind": "ragtune-run", "format_version": 1, "status": status}
    if status == "interrupted":
        manifest["result"] = {"steps": 3, "total_steps": 10}
    (run / "manifest.json").write_text(json.dumps(manifest))
    for args in (["diff", str(run)], ["ask", "q", "--model", str(run)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        if status == "interrupted":
            assert err.startswith(
                f"error: Run {run} was interrupted at step 3 of 10, so it has no model yet\n"
                f"  hint: finish it with the same ragtune tune command plus --resume (--out {run})"
            )
        else:
            assert err.startswith(f"error: Run {run} has not finished (status: running)")


def test_os_error_lines() -> None:
    import errno

    from ragtune.errors import os_error_line

    full = OSError(errno.ENOSPC, "No space left on device", "/data/runs/x/.manifest.json.ab12.tmp")
    assert os_error_line(full) == (
        "No space left on device: /data/runs/x — free some space, or choose a folder on "
        "another disk"
    )
    ro = OSError(errno.EROFS, "Read-only file system", "/home/me/.ragtune/kb")
    assert os_error_line(ro, "/home/me/.ragtune") == (
        "Read-only file system: /home/me/.ragtune/kb — the file system is read-only: choose a "
        "folder on a writable one; the data folder is RAGTUNE_HOME=/home/me/.ragtune: set it "
        "to a writable folder"
    )
    assert os_error_line(OSError(errno.EIO, "Input/output error")) == (
        "Input/output error — check the path and its permissions"
    )


def test_write_atomic_names_the_file_when_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from ragtune.io import write_atomic

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as e:
        write_atomic(tmp_path / "a.json", b"{}")
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(tmp_path / "a.json"))
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone


def test_no_library_noise_on_stderr(tmp_path: Path, tiny_embedder: Path) -> None:
    """A successful ingest that loads a model (torch backend) prints nothing on stderr:
    no "Loading weights" bar, no FutureWarning."""
    doc = tmp_path / "a.txt"
    doc.write_text("The sea is blue.\n")
    proc = ragtune(
        tmp_path / "home", "ingest", str(doc), "--kb", "x", "--embedder", str(tiny_embedder),
        "--backend", "torch", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads(proc.stdout)["added"] == ["a.txt"]


# --- a full disk ------------------------------------------------------------------------

FAULTS = Path(__file__).resolve().parent / "faults"  # sitecustomize.py: simulated ENOSPC


def ragtune_on_full_disk(
    home: Path, full: Path, *args: str, room: int = 0
) -> subprocess.CompletedProcess[str]:
    """``ragtune ARGS`` in a child whose writes under ``full`` fail with ENOSPC once
    ``room`` bytes have been written there."""
    env = {
        **os.environ,
        "RAGTUNE_HOME": str(home),
        "PYTHONPATH": f"{FAULTS}{os.pathsep}{SRC}",
        "RAGTUNE_FAULT_DIR": str(full),
        "RAGTUNE_FAULT_ENOSPC_AFTER": str(room),
    }
    cmd = [sys.executable, "-m", "ragtune.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_the_fault_injection_works(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(FAULTS), "RAGTUNE_FAULT_DIR": str(tmp_path)}
    code = f"open({str(tmp_path / 'x')!r}, 'w').write('abc')"
    ok = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert ok.returncode == 0  # no budget set: nothing changes
    env["RAGTUNE_FAULT_ENOSPC_AFTER"] = "2"
    full = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "No space left on device" in full.stderr


def test_ingest_on_a_full_disk_keeps_the_previous_index(
    ragtune_home: Path, tmp_path: Path, tiny_embedder: Path
) -> None:
    from ragtune.ingest.pipeline import ingest
    from ragtune.retrieve.kb import KnowledgeBase

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "sea.txt").write_text("The sea is blue and the waves are loud.\n")
    ingest([docs], "t", embedder=str(tiny_embedder), backend="torch")
    folder = ragtune_home / "kb" / "t"
    before = (folder / "manifest.json").read_text()
    (docs / "volcano.txt").write_text("A brand new document about volcanoes.\n")
    proc = ragtune_on_full_disk(ragtune_home, ragtune_home, "ingest", str(docs), "--kb", "t")
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert line.startswith("error: No space left on device: ")
    assert "free some space, or choose a folder on another disk" in line
    assert (folder / "manifest.json").read_text() == before
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]  # nothing half-written
    kb = KnowledgeBase.open("t")
    assert [h.chunk.doc_id for h in kb.search("waves", k=2, mode="bm25")] == ["docs/sea.txt"]
    assert kb.search("volcanoes", k=2, mode="bm25") == []
    report = ingest([docs], "t")  # with space again, the next ingest completes
    assert report.added == ["docs/volcano.txt"]
    kb = KnowledgeBase.open("t")
    assert [h.chunk.doc_id for h in kb.search("volcanoes", k=2, mode="bm25")] == [
        "docs/volcano.txt"
    ]


def test_tune_on_a_full_disk_leaves_no_half_written_run(tmp_path: Path, tiny_lm: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text((json.dumps(CHAT) + "\n") * 10)
    disk = tmp_path / "disk"
    disk.mkdir()
    args = ["tune", "--data", str(data), "--method", "lora", "--model", str(tiny_lm)]
    # 20 kB: the run starts (manifest, events) and the disk fills at its first checkpoint,
    # whose torch.save reports the OSError wrapped in a RuntimeError
    out = disk / "run"
    proc = ragtune_on_full_disk(tmp_path / "home", disk, *args, "--out", str(out), room=20_000)
    assert proc.returncode == 1, proc.stderr
    assert one_error_line(proc).startswith(f"error: No space left on device: {out}")
    written = [p for p in disk.rglob("*") if p.is_file()]
    assert not [p for p in written if ".tmp" in p.name]
    for p in written:  # whatever is there is whole
        if p.suffix == ".json":
            json.loads(p.read_text())
