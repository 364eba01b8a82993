from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ragtune.errors import RagtuneError
from ragtune.retrieve import dense
from ragtune.retrieve.dense import (
    EncoderSpec,
    OnnxEmbedder,
    TorchEmbedder,
    embed,
    exported_onnx,
    l2_normalize,
    load_embedder,
    onnx_cache_dir,
    pool,
    read_encoder_spec,
)
from tests.tiny import CORPUS

TEXTS = [*CORPUS, "short", "a much longer text " * 20, ""]


def st_vectors(folder: Path, texts: list[str]) -> np.ndarray:
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(folder), device="cpu")
    return np.asarray(model.encode(texts, batch_size=4, convert_to_numpy=True))


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return l2_normalize(a) @ l2_normalize(b).T  # (n, n)


# --- pure pieces ---------------------------------------------------------------------------


def test_pool_modes_hand_computed() -> None:
    hidden = np.array(
        [[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, -1.0], [7.0, 1.0], [9.0, 3.0]]]
    )  # (B=2, T=3, H=2); the first row's last token is padding
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(pool(hidden, mask, "mean"), [[2.0, 3.0], [7.0, 1.0]])
    np.testing.assert_allclose(pool(hidden, mask, "cls"), [[1.0, 2.0], [5.0, -1.0]])
    np.testing.assert_allclose(pool(hidden, mask, "max"), [[3.0, 4.0], [9.0, 3.0]])
    np.testing.assert_allclose(pool(hidden, mask, "lasttoken"), [[3.0, 4.0], [9.0, 3.0]])
    np.testing.assert_allclose(
        pool(hidden, mask, "mean_sqrt_len_tokens"),
        [[4.0 / np.sqrt(2), 6.0 / np.sqrt(2)], [21.0 / np.sqrt(3), 3.0 / np.sqrt(3)]],
    )


def test_l2_normalize() -> None:
    np.testing.assert_allclose(
        l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])), [[0.6, 0.8], [0, 0]]
    )


class FakeEmbedder:
    """Implements the Embedder protocol: the vector of a text is [len(text), 1]."""

    name = "fake"
    dim = 2
    max_seq_length = 8
    tokenizer = None

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        self.batches.append(texts)
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)


def test_embed_batches_by_length_and_restores_order() -> None:
    fake = FakeEmbedder()
    done: list[int] = []
    texts = ["bb", "a", "dddd", "ccc", "eeeee"]
    out = embed(fake, texts, batch_size=2, progress=done.append)
    np.testing.assert_array_equal(out[:, 0], [2, 1, 4, 3, 5])
    assert out.dtype == np.float32
    assert fake.batches == [["eeeee", "dddd"], ["ccc", "bb"], ["a"]]
    assert done == [2, 4, 5]
    assert embed(fake, [], batch_size=2).shape == (0, 2)
    with pytest.raises(RagtuneError):
        embed(fake, texts, batch_size=0)


def test_read_encoder_spec_sentence_transformers_folder(tiny_embedder: Path) -> None:
    assert read_encoder_spec(tiny_embedder, 512) == EncoderSpec("mean", True, 32)


def write_variant(src: Path, dst: Path, pooling: dict[str, bool], normalize: bool) -> Path:
    """A copy of ``src`` with another pooling config, and the Normalize module or not."""
    shutil.copytree(src, dst)
    modules = json.loads((dst / "modules.json").read_text())
    if not normalize:
        modules = [m for m in modules if not m["type"].endswith("Normalize")]
    (dst / "modules.json").write_text(json.dumps(modules))
    config = json.loads((dst / "1_Pooling" / "config.json").read_text())
    config.update({"pooling_mode_mean_tokens": False, **pooling})
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return dst


def test_read_encoder_spec_variants(tiny_embedder: Path, tmp_path: Path) -> None:
    cls = write_variant(tiny_embedder, tmp_path / "cls", {"pooling_mode_cls_token": True}, False)
    assert read_encoder_spec(cls, 512) == EncoderSpec("cls", False, 32)
    new_style = tmp_path / "new"
    shutil.copytree(tiny_embedder, new_style)
    (new_style / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "max"}))
    assert read_encoder_spec(new_style, 512).pooling == "max"


def test_plain_hf_folder_gets_mean_pooling_and_normalize(
    tiny_embedder: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(tiny_embedder, plain)
    for name in ("modules.json", "sentence_bert_config.json"):
        (plain / name).unlink()
    shutil.rmtree(plain / "1_Pooling")
    assert read_encoder_spec(plain, 77) == EncoderSpec("mean", True, 77)
    embedder = TorchEmbedder(plain, "cpu")
    assert embedder.max_seq_length == 32  # tokenizer limit 32 < 128 position embeddings
    vectors = embedder.embed_batch(["hello there", "general kenobi"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)


def test_unsupported_modules_are_refused(tiny_embedder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "dense"
    shutil.copytree(tiny_embedder, folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append(
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(RagtuneError, match="Unsupported sentence-transformers modules"):
        read_encoder_spec(folder, 512)
    weighted = write_variant(
        tiny_embedder, tmp_path / "w", {"pooling_mode_weightedmean_tokens": True}, True
    )
    with pytest.raises(RagtuneError, match="Unsupported pooling"):
        read_encoder_spec(weighted, 512)


# --- backends against sentence-transformers --------------------------------------------------


def test_torch_embedder_matches_sentence_transformers(tiny_embedder: Path) -> None:
    ref = st_vectors(tiny_embedder, TEXTS)
    embedder = TorchEmbedder(tiny_embedder, "cpu")
    assert (embedder.dim, embedder.max_seq_length) == (64, 32)
    got = embed(embedder, TEXTS, batch_size=3)
    assert got.shape == (len(TEXTS), 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(cosine_matrix(got, got), cosine_matrix(ref, ref), atol=1e-4)


def test_cls_pooling_without_normalize_matches_sentence_transformers(
    tiny_embedder: Path, tmp_path: Path
) -> None:
    folder = write_variant(tiny_embedder, tmp_path / "cls", {"pooling_mode_cls_token": True}, False)
    ref = st_vectors(folder, TEXTS)
    got = embed(TorchEmbedder(folder, "cpu"), TEXTS, batch_size=4)
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_onnx_embedder_matches_sentence_transformers(tiny_embedder: Path) -> None:
    ref = st_vectors(tiny_embedder, TEXTS)
    embedder = OnnxEmbedder(tiny_embedder, quantize=False)
    got = embed(embedder, TEXTS, batch_size=3)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(cosine_matrix(got, got), cosine_matrix(ref, ref), atol=1e-4)


def test_onnx_export_is_cached_with_a_manifest(
    tiny_embedder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = exported_onnx(tiny_embedder, quantize=False)
    assert path.parent == onnx_cache_dir(tiny_embedder, quantize=False)
    assert path.parent.name.endswith("-fp32")
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["format_version"] == "1.0"
    assert manifest["opset"] == dense.ONNX_OPSET
    assert manifest["quantization"] is None
    assert manifest["source_model"] == str(tiny_embedder)

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(dense, "export_onnx", no_export)
    assert exported_onnx(tiny_embedder, quantize=False) == path
    assert not [p for p in path.parent.parent.iterdir() if p.name.startswith(".")]


def test_onnx_export_race_keeps_the_winners_copy(
    tiny_embedder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = exported_onnx(tiny_embedder, quantize=False)
    before = path.stat().st_mtime_ns
    real = dense._read_onnx_manifest
    calls = {"n": 0}

    def first_says_missing(target: Path) -> dict[str, object] | None:
        calls["n"] += 1
        return None if calls["n"] == 1 else real(target)

    # As if another process finished its export while this one was exporting.
    monkeypatch.setattr(dense, "_read_onnx_manifest", first_says_missing)
    assert exported_onnx(tiny_embedder, quantize=False) == path
    assert path.stat().st_mtime_ns == before
    assert not [p for p in path.parent.parent.iterdir() if p.name.startswith(".")]


def test_onnx_cache_with_another_format_version_is_rebuilt(tiny_embedder: Path) -> None:
    path = exported_onnx(tiny_embedder, quantize=False)
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format_version": "0.1"}))
    assert exported_onnx(tiny_embedder, quantize=False) == path
    assert json.loads(manifest_path.read_text())["format_version"] == "1.0"


def test_onnx_int8(tiny_embedder: Path) -> None:
    ref = st_vectors(tiny_embedder, TEXTS)
    embedder = OnnxEmbedder(tiny_embedder, quantize=True)
    got = embed(embedder, TEXTS)
    assert embedder.backend == "onnx-int8"
    assert onnx_cache_dir(tiny_embedder, quantize=True).name.endswith("-int8")
    manifest = json.loads((onnx_cache_dir(tiny_embedder, True) / "manifest.json").read_text())
    assert manifest["quantization"] == "int8-dynamic"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert float(np.min(np.sum(got * ref, axis=1))) > 0.9  # random tiny weights: a loose bound


# --- load_embedder ---------------------------------------------------------------------------


def test_load_embedder_backends(tiny_embedder: Path) -> None:
    torch_embedder = load_embedder(str(tiny_embedder), backend="torch", device="cpu")
    assert isinstance(torch_embedder, TorchEmbedder)
    assert torch_embedder.name == str(tiny_embedder)
    onnx_embedder = load_embedder(str(tiny_embedder), backend="onnx")
    assert isinstance(onnx_embedder, OnnxEmbedder) and not onnx_embedder.quantize
    a = torch_embedder.embed_batch(["same text"])
    b = onnx_embedder.embed_batch(["same text"])
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_load_embedder_errors(tiny_embedder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RagtuneError, match="Unknown embedding backend"):
        load_embedder(str(tiny_embedder), backend="tensorflow")  # type: ignore[arg-type]
    with pytest.raises(RagtuneError, match="CPU only"):
        load_embedder(str(tiny_embedder), backend="onnx", device="cuda")
    with pytest.raises(RagtuneError, match="Embedder not found"):
        load_embedder("/nonexistent/model", backend="torch")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(RagtuneError, match="pip install onnxruntime"):
        load_embedder(str(tiny_embedder), backend="onnx")


# --- the real default model (integration) ----------------------------------------------------

SENTENCES = [
    "Vitamin D supplementation reduces the risk of respiratory infections.",
    "The mitochondria is the powerhouse of the cell.",
    "Aspirin inhibits cyclooxygenase enzymes, lowering prostaglandin synthesis.",
    "RAG retrieves passages; fine-tuning changes the weights.",
    "short",
    "A long passage about clinical trials and randomized controlled studies. " * 30,
]


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_minilm_matches_sentence_transformers(backend: dense.EmbedBackend) -> None:
    embedder = load_embedder("default", backend=backend, device="cpu")
    assert (embedder.name, embedder.dim, embedder.max_seq_length) == ("all-MiniLM-L6-v2", 384, 256)
    ref = st_vectors(dense.resolve_embedder("default"), SENTENCES)
    got = embed(embedder, SENTENCES, batch_size=4)
    np.testing.assert_allclose(cosine_matrix(got, got), cosine_matrix(ref, ref), atol=1e-4)
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.integration
def test_minilm_int8_agrees_with_sentence_transformers() -> None:
    embedder = load_embedder("default", backend="onnx-int8")
    ref = st_vectors(dense.resolve_embedder("default"), SENTENCES)
    cos = np.sum(embed(embedder, SENTENCES) * ref, axis=1)
    # Measured on all of SciFact: docs mean 0.995 (min 0.989), queries mean 0.993 (min 0.983).
    assert cos.mean() > 0.99 and cos.min() > 0.97
