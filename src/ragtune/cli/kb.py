"""Knowledge-base housekeeping: ``ragtune kb list | info NAME | rm NAME``."""

from __future__ import annotations

import argparse

from ragtune.cli.common import console, print_json


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kb", help="list, inspect and remove knowledge bases")
    ksub = p.add_subparsers(dest="kb_command", metavar="ACTION", required=True)
    k = ksub.add_parser("list", help="every knowledge base, with its size and counts")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_list)
    k = ksub.add_parser("info", help="one knowledge base's settings, embedder and counts")
    k.add_argument("name", metavar="NAME")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_info)
    k = ksub.add_parser("rm", help="delete a knowledge base (and everything in it)")
    k.add_argument("names", nargs="+", metavar="NAME")
    k.set_defaults(func=cmd_rm)


def _size(n: int) -> str:
    from ragtune.ingest.loaders import format_size

    return format_size(n)


def cmd_list(args: argparse.Namespace) -> int:
    from ragtune.retrieve.kb import list_knowledge_bases

    infos = list_knowledge_bases()
    if args.json:
        print_json({"knowledge_bases": [i.to_dict() for i in infos]})
        return 0
    out = console()
    if not infos:
        out.print("no knowledge bases; create one with: ragtune ingest PATH --kb NAME")
        return 0
    for i in infos:
        note = " (built by ragtune eval)" if i.made_by == "eval" else ""
        if i.problem:
            note += f" — {i.problem}"
        out.print(
            f"{i.name:<24} {i.documents:>8,} docs {i.chunks:>9,} chunks {_size(i.size_bytes):>10}"
            f"  {i.updated_at}{note}",
            markup=False,
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ragtune.retrieve.kb import kb_info

    info = kb_info(args.name)
    if args.json:
        print_json(info.to_dict())
        return 0
    out = console()
    rows = [
        ("name", info.name),
        ("documents", f"{info.documents:,}"),
        ("chunks", f"{info.chunks:,}"),
        ("size on disk", _size(info.size_bytes)),
        ("created", info.created_at),
        ("updated", info.updated_at),
        ("embedder", info.embedder),
        ("made by", info.made_by),
        *((k, str(v)) for k, v in sorted(info.config.items())),
    ]
    if info.problem:
        rows.append(("problem", info.problem))
    for key, value in rows:
        out.print(f"{key:<14} {value}", markup=False)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from ragtune.config import kb_path
    from ragtune.retrieve.kb import remove_knowledge_base

    for name in args.names:
        kb_path(name)  # reject a bad name before removing anything
    out = console()
    for name in args.names:
        remove_knowledge_base(name)
        out.print(f"removed {name}", markup=False)
    return 0
