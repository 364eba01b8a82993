"""``ragtune export``: a fine-tuned run as files other runtimes load (GGUF, safetensors)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ragtune.cli.common import console, print_json


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a fine-tuned model as GGUF (llama.cpp, Ollama) or safetensors",
        description="Export a `ragtune tune` run's merged model (or any local Gemma 3 model "
        "folder) as one GGUF file or a safetensors folder, with an Ollama Modelfile beside it; "
        "or, with --adapter, a LoRA run as base GGUF + LoRA-adapter GGUF.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--format", choices=["gguf", "safetensors"], required=True)
    p.add_argument(
        "--out", type=Path, required=True,
        help="GGUF file, or a folder (safetensors; gguf with --adapter)",
    )  # fmt: skip
    p.add_argument(
        "--adapter",
        action="store_true",
        help="with --format gguf and a LoRA run: write base.gguf + adapter.gguf (llama.cpp's "
        "LoRA-adapter form) in the --out folder instead of the merged model",
    )
    p.add_argument(
        "--gguf-type", choices=["f32", "f16", "q8_0"], default="f16", help="GGUF weight type"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ragtune.generate.export import export

    out = export(args.run_dir, args.format, args.out, args.gguf_type, adapter=args.adapter)
    modelfile = (out if out.is_dir() else out.parent) / "Modelfile"
    if args.json:
        print_json({"path": str(out), "format": args.format, "modelfile": str(modelfile)})
    else:
        console().print(f"wrote {out} (Ollama: ollama create NAME -f {modelfile})")
    return 0
