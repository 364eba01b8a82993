"""RAG commands: ingest, search, ask, eval retrieval."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    pass
