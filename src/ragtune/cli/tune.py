"""Fine-tuning commands: tune, validate, make-qa, diff, chat."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    pass
