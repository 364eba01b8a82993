"""Keeping dependencies' chatter out of ragtune's output, for every process ragtune starts
(the CLI and the worker processes of compare)."""

from __future__ import annotations

import os
import sys
import warnings


def quiet_libraries() -> None:
    """Keep library chatter out of ragtune's output: transformers' and huggingface_hub's
    progress bars ("Loading weights") and advisory logs, and Python warnings raised by
    dependencies (FutureWarning, DeprecationWarning, UserWarning). ``-v`` shows them."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    if "transformers" in sys.modules:  # imported already: its settings were read at import
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
