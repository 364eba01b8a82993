"""Incremental ingest: files -> documents -> chunks -> vectors -> a knowledge base.

Every document carries a content hash. Re-ingesting skips unchanged documents, replaces
changed ones and (with ``prune``) removes documents that disappeared, so after editing
one file a re-ingest costs that file's chunks only. Bad files are skipped with a reason,
never aborting the run. Nothing becomes visible until the store commits and the
manifest is replaced atomically, so a killed ingest leaves the previous index usable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.config import EmbedBackend, IngestConfig, kb_path
from ragtune.errors import RagtuneError
from ragtune.ingest.chunking import chunk_document
from ragtune.ingest.loaders import SkipFile, discover, load_file
from ragtune.io import write_json_atomic
from ragtune.models import model_fingerprint, resolve_embedder
from ragtune.retrieve.kb import new_manifest, read_manifest
from ragtune.retrieve.store import LanceStore, index_text
from ragtune.types import Document

log = logging.getLogger(__name__)

# (phase, advance, total): phase "read" counts files, "embed" counts chunks.
Progress = Callable[[str, int, int], None]

EMBED_GROUP = 1024  # chunks embedded and written per store append


@dataclass
class IngestReport:
    kb: str
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    missing: list[str] = field(default_factory=list)  # gone from disk, kept (no --prune)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    chunks_added: int = 0
    documents: int = 0  # totals after the ingest
    chunks: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        return d


@contextlib.contextmanager
def _writer_lock(folder: Path, name: str) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RagtuneError(
                f"Another ingest into {name!r} is running", "wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _settings(
    manifest: dict[str, Any] | None, requested: dict[str, Any], name: str
) -> dict[str, Any]:
    """The KB's settings: those it was built with, or requested/default ones for a new KB."""
    defaults = dataclasses.asdict(IngestConfig())
    if manifest is None:
        return {
            k: requested.get(k) if requested.get(k) is not None else v for k, v in defaults.items()
        }
    built = {**defaults, **manifest["config"]}
    for key in ("embedder", "backend", "chunk_tokens", "chunk_overlap"):
        want = requested.get(key)
        if want is not None and want != built[key]:
            raise RagtuneError(
                f"Knowledge base {name!r} was built with {key}={built[key]!r}, not {want!r}",
                f"drop the flag, or re-create it with --rebuild to use {key}={want!r}",
            )
    for key in ("max_file_mb", "batch_size"):  # per-run settings
        if requested.get(key) is not None:
            built[key] = requested[key]
    return built


def _under(source: str, roots: Sequence[Path]) -> bool:
    for root in roots:
        r = str(root.resolve())
        if source == r or source.startswith(r.rstrip("/") + "/"):
            return True
    return False


def ingest(
    paths: Sequence[Path],
    kb: str,
    embedder: str | None = None,
    backend: EmbedBackend | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
    max_file_mb: float | None = None,
    batch_size: int | None = None,
    attributes: Mapping[str, str] | None = None,
    prune: bool = False,
    rebuild: bool = False,
    device: str = "auto",
    progress: Progress | None = None,
) -> IngestReport:
    """Add ``paths`` (files and folders) to knowledge base ``kb``, creating it if needed.

    Settings left as None come from the knowledge base (or the defaults for a new one);
    changing the embedder or chunking of an existing knowledge base needs ``rebuild``.
    """
    t0 = time.perf_counter()
    folder = kb_path(kb)
    report = IngestReport(kb=kb)
    for key, value in (("chunk_tokens", chunk_tokens), ("chunk_overlap", chunk_overlap)):
        if value is not None and value < 0:
            raise RagtuneError(f"{key} must be positive")
    files = list(discover(paths))  # raises for paths that do not exist
    with _writer_lock(folder, kb):
        manifest = None if rebuild else _existing_manifest(folder, kb)
        requested = {
            "embedder": embedder,
            "backend": backend,
            "chunk_tokens": chunk_tokens,
            "chunk_overlap": chunk_overlap,
            "max_file_mb": max_file_mb,
            "batch_size": batch_size,
        }
        cfg = _settings(manifest, requested, kb)
        embedder_dir = resolve_embedder(cfg["embedder"])
        if manifest is not None:
            _check_embedder(manifest, embedder_dir, kb)

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(embedder_dir))
        existing: dict[str, tuple[str, str]] = {}
        store: LanceStore | None = None
        if manifest is not None:
            store = LanceStore(folder, int(manifest["embedder"]["dim"]), manifest["store"])
            existing = store.doc_index()

        # 1. Read every file; decide what is new, changed or unchanged.
        pending: list[Document] = []
        seen: dict[str, str] = {}  # doc_id -> source, for this run
        skipped_sources: set[str] = set()
        max_bytes = int(float(cfg["max_file_mb"]) * 2**20)
        for file, root in files:
            try:
                loaded = load_file(file, root, max_bytes=max_bytes, attributes=attributes)
            except SkipFile as e:
                report.skipped.append((str(file), e.reason))
                skipped_sources.add(str(file.resolve()))
            else:
                report.skipped.extend(loaded.skipped)
                for doc in loaded.documents:
                    if doc.doc_id in seen:
                        report.skipped.append(
                            (
                                f"{doc.source} ({doc.doc_id})",
                                f"duplicate id, also in {seen[doc.doc_id]}",
                            )
                        )
                        continue
                    seen[doc.doc_id] = doc.source
                    old = existing.get(doc.doc_id)
                    if old is not None and old[0] == doc.content_hash:
                        report.unchanged += 1
                        continue
                    (report.updated if old is not None else report.added).append(doc.doc_id)
                    pending.append(doc)
            if progress:
                progress("read", 1, len(files))

        # 2. Documents under the given paths that were not seen: gone from disk.
        roots = [Path(p) for p in paths]
        gone = sorted(
            d
            for d, (_, source) in existing.items()
            if d not in seen and _under(source, roots) and source not in skipped_sources
        )
        if prune:
            report.removed = gone
        else:
            report.missing = gone

        # 3. Chunk, embed and write; nothing is visible until the manifest changes.
        chunks = [
            c
            for doc in pending
            for c in chunk_document(
                doc, tokenizer, int(cfg["chunk_tokens"]), int(cfg["chunk_overlap"])
            )
        ]
        if manifest is not None and not pending and not report.removed:
            report.documents, report.chunks = store.count() if store else (0, 0)
            report.seconds = time.perf_counter() - t0
            return report  # nothing changed: leave the knowledge base untouched

        from ragtune.retrieve.dense import embed, load_embedder

        emb = load_embedder(str(cfg["embedder"]), backend=cfg["backend"], device=device)
        if store is None:
            store = LanceStore(folder, emb.dim, None)
        store.delete_documents(report.updated + report.removed)
        store.add(pending, [], np.zeros((0, emb.dim), dtype=np.float32))
        for start in range(0, len(chunks), EMBED_GROUP):
            group = chunks[start : start + EMBED_GROUP]
            vectors = embed(
                emb,
                [index_text(c) for c in group],
                batch_size=int(cfg["batch_size"]),
                progress=(lambda n: progress("embed", n, len(chunks))) if progress else None,
            )
            store.add([], group, vectors)
        report.chunks_added = len(chunks)
        snapshot = store.commit()

        new = manifest or new_manifest(
            kb,
            config={k: cfg[k] for k in ("embedder", "backend", "chunk_tokens", "chunk_overlap")},
            embedder={
                "name": str(cfg["embedder"]),
                "path": str(embedder_dir),
                "fingerprint": model_fingerprint(embedder_dir),
                "backend": cfg["backend"],
                "dim": emb.dim,
                "max_seq_length": emb.max_seq_length,
            },
        )
        _publish(folder, new, store, snapshot, report)
    report.seconds = time.perf_counter() - t0
    return report


def _publish(
    folder: Path,
    manifest: dict[str, Any],
    store: LanceStore,
    snapshot: dict[str, Any],
    report: IngestReport,
) -> None:
    """Point the manifest at ``snapshot`` (atomically), then drop what no reader needs."""
    report.documents, report.chunks = store.count()
    manifest.update(
        store=snapshot,
        updated_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        counts={"documents": report.documents, "chunks": report.chunks},
    )
    write_json_atomic(folder / "manifest.json", manifest)
    store.cleanup(snapshot)


def remove_documents(kb: str, doc_ids: Sequence[str]) -> IngestReport:
    """Remove documents from knowledge base ``kb`` (ids it does not hold are ignored)."""
    t0 = time.perf_counter()
    folder = kb_path(kb)
    report = IngestReport(kb=kb)
    with _writer_lock(folder, kb):
        manifest = _existing_manifest(folder, kb)
        if manifest is None:
            return report
        store = LanceStore(folder, int(manifest["embedder"]["dim"]), manifest["store"])
        report.removed = sorted(set(doc_ids) & set(store.doc_index()))
        if report.removed:
            store.delete_documents(report.removed)
            _publish(folder, manifest, store, store.commit(), report)
        else:
            report.documents, report.chunks = store.count()
    report.seconds = time.perf_counter() - t0
    return report


def _existing_manifest(folder: Path, name: str) -> dict[str, Any] | None:
    if not (folder / "manifest.json").exists():
        return None
    return read_manifest(folder, name)


def _check_embedder(manifest: dict[str, Any], embedder_dir: Path, name: str) -> None:
    if model_fingerprint(embedder_dir) != manifest["embedder"]["fingerprint"]:
        raise RagtuneError(
            f"The embedder of knowledge base {name!r} has changed since it was built",
            "re-create the knowledge base with --rebuild",
        )
