"""The generation engine of compare, demo and make-qa (``--lm-backend``, ``[generate]
lm_backend``): the option reaches the generator of every arm, the transformers engine
decodes the same greedy tokens as the native one on the tiny model, and combinations a
backend cannot run fail with one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ragtune.cli import main
from ragtune.errors import RagtuneError
from ragtune.evaluate.arm import ArmSpec, run_arm
from ragtune.evaluate.compare import run_compare
from ragtune.evaluate.settings import CompareInputs, CompareSettings, validate
from ragtune.evaluate.world import make_world, write_world
from ragtune.generate.engine import Generator, SamplingParams, load_generator

PROMPTS = ["Question: What is the capital of France?\nAnswer:", "The quick brown fox", "Zorb"]


@pytest.fixture(scope="module")
def world_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    world = make_world(seed=1, n_orgs=1, n_people=2, n_places=1)
    return write_world(world, tmp_path_factory.mktemp("world"))


def test_transformers_backend_decodes_what_the_native_engine_does(tiny_lm: Path) -> None:
    """The transformers engine keeps transformers' model (no native scheduler) and, greedy
    in fp32, gives the native engine's tokens."""
    hf = Generator.load(str(tiny_lm), device="cpu", dtype="float32", backend="transformers")
    native = Generator.load(str(tiny_lm), device="cpu", dtype="float32")
    try:
        assert (hf.backend, hf.native, type(hf.model).__name__) == (
            "transformers", False, "Gemma3ForCausalLM",
        )  # fmt: skip
        assert native.backend == "native" and native.native
        a = hf.generate(PROMPTS, max_new_tokens=7, stop=(), batch_size=2)
        b = native.generate(PROMPTS, max_new_tokens=7, stop=(), batch_size=2)
        assert [(g.text, g.new_tokens) for g in a] == [(g.text, g.new_tokens) for g in b]
        assert all(g.new_tokens == 7 for g in a)
        with pytest.raises(RagtuneError, match="transformers backend decodes greedy batches"):
            hf.submit("hi", SamplingParams())
        with pytest.raises(RagtuneError, match="transformers backend decodes greedy batches"):
            hf.add_adapter("a", tiny_lm)
    finally:
        hf.close()
        native.close()


def test_transformers_backend_refuses_int8(tiny_lm: Path) -> None:
    with pytest.raises(RagtuneError, match="int8 weights need the native engine") as e:
        Generator.load(str(tiny_lm), device="cpu", backend="transformers", quantize="int8")
    assert "\n" not in e.value.message
    with pytest.raises(RagtuneError, match="--speculate need the native engine"):
        Generator.load(str(tiny_lm), device="cpu", backend="transformers", speculate=2)


def test_unknown_backend_is_refused(tiny_lm: Path) -> None:
    with pytest.raises(RagtuneError, match="Unknown generation backend 'vllm'"):
        Generator.load(str(tiny_lm), backend="vllm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lm_backend"):
        ArmSpec.from_dict({"arm": "base", "model": "m", "questions": ["q"], "lm_backend": "x"})


def test_arm_answers_with_the_backend_it_is_given(tiny_lm: Path) -> None:
    spec = ArmSpec(arm="base", model=str(tiny_lm), questions=PROMPTS, max_new_tokens=5,
                   device="cpu", dtype="float32")  # fmt: skip
    native = run_arm(spec, show_progress=False)
    hf = run_arm(ArmSpec.from_dict({**spec.to_dict(), "lm_backend": "transformers"}), False)
    assert (native["lm_backend"], hf["lm_backend"]) == ("native", "transformers")
    assert [a["answer"] for a in hf["answers"]] == [a["answer"] for a in native["answers"]]


def test_compare_records_the_engine(
    world_files: dict[str, Path], tmp_path: Path, tiny_lm: Path
) -> None:
    settings = CompareSettings(model=str(tiny_lm), arms=("base",), max_new_tokens=4,
                               device="cpu", lm_backend="transformers")  # fmt: skip
    results = run_compare(settings, CompareInputs(world_files["questions"]), tmp_path / "r")
    assert results["settings"]["lm_backend"] == "transformers"
    assert results["arms"]["base"]["lm_backend"] == "transformers"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lm_backend": "vllm"}, "Unknown generation backend 'vllm'"),
        ({"lm_backend": "llamacpp", "device": "cuda"}, "runs its GGUF as stored, on the CPU"),
    ],
)
def test_compare_refuses_what_a_backend_cannot_run(
    world_files: dict[str, Path], change: dict[str, str], message: str
) -> None:
    settings = CompareSettings(**change)  # type: ignore[arg-type]
    with pytest.raises(RagtuneError, match=message):
        validate(settings, CompareInputs(world_files["questions"]))


def test_llamacpp_missing_is_one_line(
    world_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as when absent
    with pytest.raises(RagtuneError, match="needs llama-cpp-python"):
        load_generator("default", "cpu", "auto", "llamacpp")
    argv = ["compare", "--questions", str(world_files["questions"]), "--out", str(tmp_path / "r"),
            "--arms", "base", "--lm-backend", "llamacpp"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The llama.cpp backend needs llama-cpp-python") and (
        "pip install 'ragtune[llamacpp]'" in err
    )
    assert "Traceback" not in err and not (tmp_path / "r").exists()  # refused before any work
    docs = str(world_files["docs"])
    qa = ["make-qa", docs, "--out", str(tmp_path / "qa.jsonl"), "--lm-backend", "llamacpp"]
    assert main([*qa, "--method", "model"]) == 2
    assert "needs llama-cpp-python" in capsys.readouterr().err
    assert main([*qa, "--method", "template"]) == 0  # no model is used: nothing to refuse


def test_the_option_and_the_config_reach_compare_and_make_qa(
    ragtune_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ragtune.evaluate.compare as compare
    import ragtune.generate.engine as engine

    ragtune_home.mkdir(parents=True, exist_ok=True)
    (ragtune_home / "config.toml").write_text('[generate]\nlm_backend = "transformers"\n')
    seen: list[object] = []

    def fake_run(settings, inputs, out, say):  # type: ignore[no-untyped-def]
        seen.append(settings.lm_backend)
        return {"arms": {}, "verdict": {"text": ""}}

    def fake_load(model: str, device: str, dtype: str, backend: str) -> Generator:
        seen.append(backend)
        raise RagtuneError("stop here")

    monkeypatch.setattr(compare, "run_compare", fake_run)
    monkeypatch.setattr(engine, "load_generator", fake_load)
    q = tmp_path / "q.jsonl"
    q.write_text("")
    base = ["compare", "--questions", str(q), "--out", str(tmp_path / "r")]
    assert main(base) == 0
    assert main([*base, "--lm-backend", "native"]) == 0  # a flag wins over the file
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Zorbland's capital is Vetrin.")
    qa = ["make-qa", str(docs), "--out", str(tmp_path / "qa.jsonl"), "--method", "model"]
    assert main(qa) == 2  # the fake loader's error
    assert seen == ["transformers", "native", "transformers", "transformers"]


@pytest.mark.integration
def test_llamacpp_engine_runs_an_f16_gguf_of_the_same_weights(
    default_lm: Path, models_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The llama.cpp engine of compare: the default model's converted folder written once
    as an f16 GGUF in the cache (reused after), answering as the model does."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional extra)")
    monkeypatch.setenv("RAGTUNE_HOME", str(models_home))
    g = load_generator("default", "cpu", "auto", "llamacpp")
    try:
        path = Path(g.name)
        assert g.backend == "llamacpp" and path.name == "model-f16.gguf"
        assert path.parent.parent == models_home / "cache" / "gguf"
        (out,) = g.generate([PROMPTS[0]], max_new_tokens=4)
        assert out.text.startswith("Paris")
    finally:
        g.close()
    written = path.stat().st_mtime_ns
    load_generator("default", "cpu", "auto", "llamacpp").close()
    assert path.stat().st_mtime_ns == written  # converted once
