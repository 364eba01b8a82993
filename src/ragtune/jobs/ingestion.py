"""The ingestion job: a worker takes one vector store file at a time and adds it to (or, once
deleted, removes it from) the store's knowledge base, with ragtune's own ingest pipeline.

Each vector store is the knowledge base named after its id (``ragtune search --kb vs_…``
reads it too); a file becomes the document ``<file id><suffix>``. The pipeline publishes a
new snapshot atomically and skips unchanged documents, so a worker killed half-way leaves
the index as it was, and the next worker's attempt (after the lease runs out) ingests the
file again and completes it once.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ragtune.errors import RagtuneError
from ragtune.jobs.settings import ServiceSettings
from ragtune.jobs.store import ObjectStore
from ragtune.jobs.vector_stores import IngestClaim, VectorStoreDB

log = logging.getLogger(__name__)

T = TypeVar("T")
SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")


def document_id(file_id: str, filename: str) -> str:
    """The knowledge-base document id of a vector store file."""
    return f"{file_id}{Path(filename).suffix.lower()}"


class Ingester:
    def __init__(self, settings: ServiceSettings, db: VectorStoreDB, objects: ObjectStore):
        self.settings = settings
        self.db = db
        self.objects = objects

    def run_one(self) -> bool:
        """Claim waiting files of one store and ingest (or purge) them in one run; False when
        there was nothing to do."""
        claim = self.db.claim_ingest(self.settings.lease_s)
        if claim is None:
            return False
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(self.settings.lease_s / 3):
                if not self.db.heartbeat_ingest(claim, self.settings.lease_s):
                    return

        thread = threading.Thread(target=heartbeat, name="heartbeat-ingest", daemon=True)
        thread.start()
        try:
            if claim.deleted:
                self._purge(claim)
            else:
                self._ingest(claim)
        except _Busy:
            self.db.release_ingest(claim)
        except Exception as e:  # a crash fails these files, the worker lives
            log.exception("ingesting into %s failed", claim.store_id)
            code = "invalid_file" if isinstance(e, RagtuneError) else "server_error"
            message = e.message if isinstance(e, RagtuneError) else f"{type(e).__name__}: {e}"
            for f in claim.files:
                self.db.finish_ingest(
                    claim, f.file_id, "failed", None, 0, {"code": code, "message": message}
                )
        finally:
            done.set()
            thread.join()
        return True

    def _purge(self, claim: IngestClaim) -> None:
        from ragtune.ingest.pipeline import remove_documents

        store = claim.store
        if store is not None:
            doc_ids = [document_id(f.file_id, f.filename) for f in claim.files]
            _guard(lambda: remove_documents(store.kb_name, doc_ids))
        self.db.purged(claim)

    def _ingest(self, claim: IngestClaim) -> None:
        from ragtune.ingest.pipeline import ingest

        store = claim.store
        if store is None:  # the store was deleted meanwhile
            return
        links: dict[str, Path] = {}
        with tempfile.TemporaryDirectory(prefix="ragtune-ingest-") as tmp:
            for f in claim.files:
                suffix = Path(f.filename).suffix.lower()
                if suffix not in SUPPORTED_SUFFIXES:
                    self.db.finish_ingest(
                        claim,
                        f.file_id,
                        "failed",
                        None,
                        0,
                        {
                            "code": "unsupported_file",
                            "message": f"File type {suffix or '(none)'} is not supported for "
                            f"retrieval (supported: {', '.join(SUPPORTED_SUFFIXES)})",
                        },
                    )
                    continue
                link = Path(tmp) / document_id(f.file_id, f.filename)
                link.symlink_to(self.objects.local_path(f.object_key))
                links[f.file_id] = link
            if not links:
                return
            report = _guard(
                lambda: ingest(
                    list(links.values()),
                    kb=store.kb_name,
                    embedder=self.settings.embedder,
                    backend=self.settings.embed_backend,  # type: ignore[arg-type]
                    chunk_tokens=store.chunk_tokens,
                    chunk_overlap=store.chunk_overlap,
                    device=self.settings.device,
                )
            )
        skipped = {path: why for path, why in report.skipped}
        for f in claim.files:
            made = links.get(f.file_id)
            if made is None:
                continue
            if str(made) in skipped:
                error = {"code": "invalid_file", "message": skipped[str(made)]}
                self.db.finish_ingest(claim, f.file_id, "failed", None, 0, error)
            else:  # added, updated, or unchanged from an attempt that died before finishing
                size = self.objects.local_path(f.object_key).stat().st_size
                self.db.finish_ingest(claim, f.file_id, "completed", made.name, size)


class _Busy(Exception):
    """Another worker is writing this knowledge base: try the file again later."""


def _guard(run: Callable[[], T]) -> T:
    try:
        return run()
    except RagtuneError as e:
        if e.message.startswith("Another ingest into"):
            raise _Busy() from None
        raise
