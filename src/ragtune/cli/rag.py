"""RAG commands: ingest, search, ask, eval retrieval."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal

from ragtune.cli.common import (
    Progress,
    add_dtype_arg,
    add_fusion_args,
    add_search_args,
    console,
    print_json,
    search_kwargs,
)
from ragtune.config import Config, ragtune_home
from ragtune.errors import RagtuneError
from ragtune.types import SearchMode

ASK_K = 5  # chunks put in the prompt by ask and chat (search returns [retrieve] k)


def add_parsers(sub: argparse._SubParsersAction, cfg: Config) -> None:
    ing = cfg.ingest
    p = sub.add_parser(
        "ingest",
        help="add files and folders to a knowledge base (incremental)",
        description="Add .txt, .md, .html, .pdf files and BEIR .jsonl corpora to a knowledge "
        "base. Unchanged documents are skipped, changed ones replaced.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--kb", required=True, help="knowledge base name")
    p.add_argument("--prune", action="store_true", help="remove documents gone from PATHs")
    p.add_argument("--rebuild", action="store_true", help="build the knowledge base afresh")
    p.add_argument("--embedder", help=f"embedder folder (new bases: {ing.embedder})")
    p.add_argument(
        "--backend",
        choices=["torch", "onnx", "onnx-int8"],
        help=f"embedding backend (new bases: {ing.backend})",
    )
    p.add_argument(
        "--chunk-tokens", type=int, help=f"chunk size in embedder tokens ({ing.chunk_tokens})"
    )
    p.add_argument("--chunk-overlap", type=int, help=f"overlap in tokens ({ing.chunk_overlap})")
    p.add_argument(
        "--max-file-mb", type=float, help=f"skip files larger than this ({ing.max_file_mb:g})"
    )
    p.add_argument("--batch-size", type=int, help=f"chunks per embedding batch ({ing.batch_size})")
    p.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="attribute for all docs"
    )
    p.add_argument("--device", default=cfg.generate.device)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_ingest, ingest_config=ing)

    p = sub.add_parser("search", help="retrieve chunks from a knowledge base")
    p.add_argument("query")
    p.add_argument("--kb", required=True)
    add_search_args(p, cfg.retrieve)
    p.add_argument("--device", default=cfg.generate.device)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("ask", help="answer a question from a knowledge base, with citations")
    p.add_argument("question")
    p.add_argument("--kb", help="knowledge base (omit for a closed-book answer)")
    p.add_argument("--model", default=cfg.generate.model, help="default, HF folder or run dir")
    add_search_args(p, cfg.retrieve, k_default=ASK_K)
    p.add_argument("--context-tokens", type=int, default=cfg.generate.context_tokens)
    p.add_argument("--max-new-tokens", type=int, default=cfg.generate.max_new_tokens)
    p.add_argument("--device", default=cfg.generate.device)
    add_dtype_arg(p, "generation", cfg.generate.dtype)
    _add_quant_args(p)
    p.add_argument(
        "--backend",
        choices=["native", "llamacpp"],
        default="native",
        help="llamacpp: run a GGUF (--model default or a .gguf file) with llama-cpp-python",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ask, batch_size=cfg.generate.batch_size)

    p = sub.add_parser("chat", help="talk to a model (optionally with a knowledge base)")
    p.add_argument("--model", default=cfg.generate.model, help="default, HF folder or run dir")
    p.add_argument("--kb", help="knowledge base to answer from (omit for closed book)")
    p.add_argument("--system", help="system instruction for every turn")
    add_search_args(p, cfg.retrieve, k_default=ASK_K)
    p.add_argument("--context-tokens", type=int, default=cfg.generate.context_tokens)
    p.add_argument("--max-new-tokens", type=int, default=cfg.generate.max_new_tokens)
    p.add_argument("--history", type=int, default=3, help="earlier turns kept in the prompt")
    p.add_argument("--device", default=cfg.generate.device)
    add_dtype_arg(p, "generation", cfg.generate.dtype)
    _add_quant_args(p)
    p.add_argument(
        "--backend",
        choices=["native", "llamacpp"],
        default="native",
        help="llamacpp: run a GGUF (--model default or a .gguf file) with llama-cpp-python",
    )
    p.set_defaults(func=cmd_chat, batch_size=cfg.generate.batch_size)

    p = sub.add_parser("eval", help="evaluate retrieval on a BEIR-layout data set")
    esub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    e = esub.add_parser("retrieval", help="nDCG@10, recall@10/100, MRR@10 per mode")
    e.add_argument("--corpus", required=True, type=Path)
    e.add_argument("--queries", required=True, type=Path)
    e.add_argument("--qrels", required=True, type=Path)
    e.add_argument("--modes", default="bm25,dense,hybrid")
    e.add_argument(
        "--backend", choices=["torch", "onnx", "onnx-int8"], default=ing.backend, help="embedding"
    )
    e.add_argument("--embedder", default=ing.embedder, help="embedder folder or 'default'")
    add_fusion_args(e, cfg.retrieve)
    e.add_argument("--device", default=cfg.generate.device)
    e.add_argument(
        "--keep-kb",
        action="store_true",
        help="keep the knowledge base built for the evaluation (eval-<hash>) so a re-run "
        "reuses it; by default it is removed afterwards (ragtune kb rm removes a kept one)",
    )
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval_retrieval)


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    """--int8 / --int4 and --speculate: the generator's opt-in speed options."""
    p.add_argument(
        "--speculate",
        type=int,
        default=0,
        metavar="K",
        help="prompt-lookup speculative decoding: verify up to K drafted tokens a step",
    )
    q = p.add_mutually_exclusive_group()
    q.add_argument("--int8", action="store_true", help="int8 weights (CPU, Gemma 3)")
    q.add_argument(
        "--int4",
        action="store_true",
        help="group-wise int4 weights (CPU, Gemma 3): faster than --int8, less exact",
    )


def _quantize(args: argparse.Namespace) -> Literal["none", "int8", "int4"]:
    return "int8" if args.int8 else "int4" if args.int4 else "none"


def _meta(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key or key in ("source", "doc_id"):
            raise RagtuneError(
                f"Bad --meta {spec!r}", "use KEY=VALUE with a key other than source/doc_id"
            )
        out[key] = value
    return out


def cmd_ingest(args: argparse.Namespace) -> int:
    from ragtune.ingest.pipeline import ingest

    with Progress(enabled=not args.json) as progress:
        report = ingest(
            args.paths,
            args.kb,
            embedder=args.embedder,
            backend=args.backend,
            chunk_tokens=args.chunk_tokens,
            chunk_overlap=args.chunk_overlap,
            max_file_mb=args.max_file_mb,
            batch_size=args.batch_size,
            attributes=_meta(args.meta),
            prune=args.prune,
            rebuild=args.rebuild,
            device=args.device,
            progress=progress.update,
            defaults=args.ingest_config,
        )
    if args.json:
        print_json(report.to_dict())
        return 0
    out = console()
    out.print(
        f"[bold]{args.kb}[/]: {len(report.added)} added, {len(report.updated)} updated, "
        f"{report.unchanged} unchanged, {len(report.removed)} removed, "
        f"{len(report.skipped)} skipped — {report.chunks_added} chunks embedded in "
        f"{report.seconds:.1f}s; now {report.documents} documents, {report.chunks} chunks"
    )
    for path, reason in report.skipped:
        out.print(f"  skipped {path}: {reason}", highlight=False)
    if report.missing:
        out.print(
            f"  {len(report.missing)} document(s) no longer found under the given paths "
            "(kept; use --prune to remove): "
            + ", ".join(report.missing[:5])
            + (" ..." if len(report.missing) > 5 else ""),
            highlight=False,
        )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ragtune.retrieve.kb import KnowledgeBase

    kb = KnowledgeBase.open(args.kb, device=args.device)
    hits = kb.search(args.query, **search_kwargs(args))
    if args.json:
        print_json({"query": args.query, "hits": [h.to_dict() for h in hits]})
        return 0
    out = console()
    if not hits:
        out.print("no results")
    for h in hits:
        scores = " ".join(f"{k}={v:.3f}" for k, v in sorted(h.scores.items()))
        out.print(f"[bold]{h.rank:>2}.[/] {h.chunk.doc_id}  [dim]{scores}[/]", highlight=False)
        snippet = " ".join(h.chunk.text.split())
        out.print(f"    {snippet[:200]}{'…' if len(snippet) > 200 else ''}", highlight=False)
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    import time

    from ragtune.generate.answer import answer_questions
    from ragtune.generate.engine import Generator
    from ragtune.retrieve.kb import KnowledgeBase

    t0 = time.perf_counter()
    contexts = None
    timings: dict[str, float] = {}
    if args.kb:
        kb = KnowledgeBase.open(args.kb, device=args.device)
        contexts = [kb.search(args.question, **search_kwargs(args))]
        timings["retrieve_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    generator = Generator.load(
        args.model,
        args.device,
        args.dtype,
        quantize=_quantize(args),
        backend=args.backend,
        speculate=args.speculate,
    )
    timings["load_model_s"] = time.perf_counter() - t1
    answer = answer_questions(
        [args.question],
        generator,
        contexts=contexts,
        context_tokens=args.context_tokens,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )[0]
    timings["generate_s"] = answer.timings["generate_s"]
    timings["total_s"] = time.perf_counter() - t0
    if args.json:
        print_json(
            {
                "answer": answer.text,
                "citations": [
                    {
                        "doc_id": c.doc_id,
                        "source": c.source,
                        "start": c.start,
                        "end": c.end,
                        "text": c.text,
                        "marker": c.marker,
                        "chunk_id": c.chunk_id,
                        "how": c.how,
                    }
                    for c in answer.citations
                ],
                "timings": timings,
                "model": answer.model,
                "sources": [h.chunk.chunk_id for h in answer.hits],
            }
        )
        return 0
    out = console()
    out.print(answer.text or "[dim](no answer)[/]", highlight=False)
    for c in answer.citations:
        note = "" if c.how == "model" else " (attributed)"
        out.print(
            f"  [{c.marker}] {c.source} chars {c.start}-{c.end}{note}",
            highlight=False,
            markup=False,
        )
    if contexts is None:
        out.print("[dim](closed book: no --kb given)[/]")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from ragtune.generate.answer import answer_questions
    from ragtune.generate.engine import Generator
    from ragtune.retrieve.kb import KnowledgeBase

    kb = KnowledgeBase.open(args.kb, device=args.device) if args.kb else None
    generator = Generator.load(
        args.model,
        args.device,
        args.dtype,
        quantize=_quantize(args),
        backend=args.backend,
        speculate=args.speculate,
    )
    out = console()
    out.print(
        f"[dim]{generator.name} {'with ' + args.kb if kb else '(closed book)'}; "
        "empty line or Ctrl-D to quit[/]"
    )
    history: list[tuple[str, str]] = []
    kw = search_kwargs(args)
    while True:
        try:
            question = input("> ").strip()
        except EOFError:
            break
        if not question:
            break
        contexts = [kb.search(question, **kw)] if kb else None
        answer = answer_questions(
            [question],
            generator,
            contexts=contexts,
            context_tokens=args.context_tokens,
            max_new_tokens=args.max_new_tokens,
            instruction=args.system,
            fewshot=history[-args.history :] if args.history > 0 else (),
            batch_size=args.batch_size,
        )[0]
        out.print(answer.text or "[dim](no answer)[/]", highlight=False)
        for c in answer.citations:
            out.print(f"  [{c.marker}] {c.source} chars {c.start}-{c.end}", markup=False)
        history.append((question, answer.text))
    return 0


def _eval_kb_names() -> set[str]:
    root = ragtune_home() / "kb"
    return {p.name for p in root.glob("eval-*")} if root.is_dir() else set()


def _remove_eval_kbs(before: set[str]) -> None:
    """Remove the eval-<hash> knowledge bases this evaluation created or refreshed."""
    from ragtune.retrieve.kb import remove_knowledge_base

    for name in sorted(_eval_kb_names() - before):
        remove_knowledge_base(name)


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from ragtune.evaluate.retrieval import evaluate_retrieval

    before = _eval_kb_names()  # a base kept by an earlier --keep-kb run stays

    modes: list[SearchMode] = []
    for m in (m.strip() for m in args.modes.split(",") if m.strip()):
        if m not in ("bm25", "dense", "hybrid"):
            raise RagtuneError(f"Unknown mode {m!r}", "use bm25, dense and/or hybrid")
        modes.append(m)
    with Progress(enabled=not args.json) as progress:
        try:
            result: dict[str, Any] = evaluate_retrieval(
                args.corpus,
                args.queries,
                args.qrels,
                modes=modes,
                embedder=None if args.embedder == "default" else args.embedder,
                backend=args.backend,
                device=args.device,
                fusion=args.fusion,
                rrf_k=args.rrf_k,
                bm25_weight=args.bm25_weight,
                dense_weight=args.dense_weight,
                progress=progress.update,
            )
        finally:
            if not args.keep_kb:
                _remove_eval_kbs(before)
    if args.json:
        print_json(result)
        return 0
    out = console()
    for mode in modes:
        m = result[mode]
        out.print(
            f"{mode:<7} nDCG@10 {m['ndcg@10']:.4f}  recall@10 {m['recall@10']:.4f}  "
            f"recall@100 {m['recall@100']:.4f}  MRR@10 {m['mrr@10']:.4f}"
        )
    print(f"({result['_meta']['queries']} queries)", file=sys.stderr)
    return 0
