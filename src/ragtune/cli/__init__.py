"""The ``ragtune`` command line. Thin: parse, call the library, print.

Each command group lives in its own module and adds its sub-parsers in
``add_parsers``; every sub-parser sets ``func`` to a handler ``(args) -> int``.
User mistakes raise :class:`ragtune.errors.RagtuneError` and are printed as one line
with a hint (exit status 2); an ``OSError`` (permissions, a full disk, a file where a
folder should be) as one line naming the path and what to do (exit status 1); Ctrl-C
exits with status 130.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ragtune import __version__
from ragtune.config import Config, load_config, ragtune_home
from ragtune.errors import RagtuneError, os_error_line
from ragtune.logs import quiet_libraries


def build_parser(cfg: Config | None = None) -> argparse.ArgumentParser:
    """The parser; flag defaults come from ``cfg`` (``config.toml``, or the built-in
    defaults when it is missing or broken, so ``--help`` always works)."""
    from ragtune.cli import compare, export, kb, makeqa, migrate, rag, serve, tune

    if cfg is None:
        cfg = _read_config()[0]
    parser = argparse.ArgumentParser(
        prog="ragtune",
        description="RAG and true fine-tuning, locally, measured against each other. "
        "Defaults come from $RAGTUNE_HOME/config.toml (see docs/config.md).",
    )
    parser.add_argument("--version", action="version", version=f"ragtune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    rag.add_parsers(sub, cfg)
    kb.add_parsers(sub)
    tune.add_parsers(sub, cfg)
    makeqa.add_parsers(sub, cfg)
    compare.add_parsers(sub, cfg)
    export.add_parsers(sub)
    serve.add_parsers(sub)
    migrate.add_parsers(sub)
    return parser


def _read_config() -> tuple[Config, RagtuneError | None]:
    try:
        return load_config(), None
    except RagtuneError as e:
        return Config(), e


def main(argv: list[str] | None = None) -> int:
    verbose = "-v" in (argv if argv is not None else sys.argv[1:]) or "--verbose" in (
        argv if argv is not None else sys.argv[1:]
    )
    if not verbose:
        quiet_libraries()
    cfg, config_error = _read_config()
    parser = build_parser(cfg)
    args = parser.parse_args(argv)  # --help and usage errors work even with a broken config
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if config_error is not None:
            raise config_error
        return int(args.func(args) or 0)
    except RagtuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {os_error_line(e, str(ragtune_home()))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
