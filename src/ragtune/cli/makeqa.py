"""``ragtune make-qa``: documents -> checked question/answer training examples."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from ragtune.cli.common import add_lm_backend_arg, console, print_json
from ragtune.config import Config
from ragtune.errors import RagtuneError
from ragtune.io import write_text_atomic


def add_parsers(sub: argparse._SubParsersAction, cfg: Config) -> None:
    p = sub.add_parser(
        "make-qa",
        help="turn documents into question/answer training examples with paraphrases",
        description="Generate question/answer pairs from documents, drop those whose answer "
        "is not in the source text, and add paraphrased questions (OpenAI chat JSONL).",
    )
    p.add_argument("docs", nargs="+", type=Path, metavar="DOCS")
    p.add_argument("--out", type=Path, required=True, help="training JSONL to write")
    p.add_argument(
        "--model",
        "--base",
        dest="base",
        default=cfg.generate.model,
        help="local generator model (Gemma)",
    )
    p.add_argument("--generator-url", help="OpenAI-compatible endpoint, e.g. http://host/v1")
    p.add_argument("--generator-model", default="default", help="model name at the endpoint")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var with the API key")
    p.add_argument(
        "--method",
        choices=["template", "model", "both"],
        help="how questions are written: rules over sentences (template, no model; the "
        "default), the generator model (model; the default with --generator-url), or both",
    )
    p.add_argument(
        "--train-docs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write the passages read as raw-text examples (continued pre-training "
        "together with the pairs; default on)",
    )
    p.add_argument("--paraphrases", type=int, default=2, help="paraphrases per question")
    p.add_argument("--max-pairs", type=int, help="stop after this many kept pairs")
    p.add_argument("--system", help="system message for every example")
    p.add_argument("--seed", type=int, default=0, help="order in which passages are used")
    p.add_argument("--device", default=cfg.generate.device)
    add_lm_backend_arg(p, cfg.generate.lm_backend)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_make_qa)


def cmd_make_qa(args: argparse.Namespace) -> int:
    from ragtune.tune.makeqa import LocalQAWriter, QAWriter, make_qa_files
    from ragtune.tune.qa_endpoint import EndpointQAWriter
    from ragtune.tune.qa_writers import qa_writer
    from ragtune.tune.templateqa import QAMethod

    if args.paraphrases < 0:
        raise RagtuneError("--paraphrases must be 0 or more")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise RagtuneError("--max-pairs must be positive")
    method: QAMethod = args.method or ("model" if args.generator_url else "template")
    if args.generator_url and method == "template":
        raise RagtuneError(
            "--generator-url is not used by --method template", "use --method model or both"
        )
    if args.lm_backend == "llamacpp" and method != "template" and not args.generator_url:
        from ragtune.generate.engine import check_llamacpp

        check_llamacpp(device=args.device)

    def model_writer() -> QAWriter:
        if args.generator_url:
            return EndpointQAWriter(
                args.generator_url, args.generator_model, os.environ.get(args.api_key_env, "")
            )
        from ragtune.generate.engine import load_generator

        return LocalQAWriter(load_generator(args.base, args.device, "auto", args.lm_backend))

    writer = qa_writer(method, model_writer)
    records, report = make_qa_files(
        args.docs,
        writer,
        seed=args.seed,
        paraphrases=args.paraphrases,
        max_pairs=args.max_pairs,
        system=args.system,
        train_docs=args.train_docs,
        method=method,
    )
    if not records:
        raise RagtuneError(
            f"No usable pairs: {report.generated} generated, {report.dropped_unsupported} "
            f"unsupported by their passage, {report.dropped_malformed} malformed",
            "try another --method, or a stronger generator with --generator-url",
        )
    write_text_atomic(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    if args.json:
        print_json(
            {
                "out": str(args.out),
                **dataclasses.asdict(report),
                "dropped_by_reason": report.dropped_by_reason,
                "lm_backend": None if args.generator_url else args.lm_backend,
            }
        )
        return 0
    console().print(
        f"{report.examples} examples ({report.kept} pairs + {report.paraphrases} paraphrases, "
        f"{report.method}) and {report.document_examples} raw-text passages from "
        f"{report.passages} passages -> {args.out}; dropped {report.dropped_unsupported} "
        f"unsupported by their source and {report.dropped_malformed} malformed; "
        f"{report.documents_covered} of {report.documents} documents covered"
    )
    return 0
