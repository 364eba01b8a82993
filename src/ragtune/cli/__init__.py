"""The ``ragtune`` command line. Thin: parse, call the library, print.

Each command group lives in its own module and adds its sub-parsers in
``add_parsers``; every sub-parser sets ``func`` to a handler ``(args) -> int``.
User mistakes raise :class:`ragtune.errors.RagtuneError` and are printed as one line
with a hint; Ctrl-C exits with status 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ragtune import __version__
from ragtune.errors import RagtuneError


def build_parser() -> argparse.ArgumentParser:
    from ragtune.cli import compare, makeqa, migrate, rag, serve, tune

    parser = argparse.ArgumentParser(
        prog="ragtune",
        description="RAG and true fine-tuning, locally, measured against each other.",
    )
    parser.add_argument("--version", action="version", version=f"ragtune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    rag.add_parsers(sub)
    tune.add_parsers(sub)
    makeqa.add_parsers(sub)
    compare.add_parsers(sub)
    serve.add_parsers(sub)
    migrate.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Library noise that is not actionable for a CLI user.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return int(args.func(args) or 0)
    except RagtuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
