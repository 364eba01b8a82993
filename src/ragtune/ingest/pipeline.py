"""Incremental ingest: files -> documents -> chunks -> vectors -> a knowledge base.

Every document carries a content hash. Re-ingesting skips unchanged documents, replaces
changed ones and (with ``prune``) removes documents that disappeared, so after editing
one file a re-ingest costs that file's chunks only. Bad files are skipped with a reason,
never aborting the run. Nothing becomes visible until the store commits and the
manifest is replaced atomically, so a killed ingest leaves the previous index usable.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.config import EmbedBackend, IngestConfig, kb_path
from ragtune.errors import RagtuneError
from ragtune.ingest.chunking import check_sizes, iter_chunks
from ragtune.ingest.loaders import SkipFile, discover, iter_file
from ragtune.models import model_fingerprint, resolve_embedder
from ragtune.retrieve.kb import (
    kb_lock,
    load_manifest,
    new_manifest,
    new_store,
    open_store,
    publish,
)
from ragtune.retrieve.store import index_text
from ragtune.types import Chunk, Document

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ragtune.retrieve.kb import WritableStore

# (phase, advance, total): "read" counts files, "embed" counts chunks (its total grows as
# files are read), "doc:<id>" counts the characters of one big document done.
Progress = Callable[[str, int, int], None]

EMBED_GROUP = 1024  # chunks embedded and written per store append: bounds memory
BIG_DOCUMENT_CHARS = 1 << 20  # documents this long get a progress bar of their own


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


def _settings(
    manifest: dict[str, Any] | None,
    requested: dict[str, Any],
    name: str,
    config: IngestConfig | None = None,
) -> dict[str, Any]:
    """The KB's settings: those it was built with, or requested/default ones for a new KB
    (defaults from ``config``, i.e. ``[ingest]`` of config.toml, else IngestConfig's)."""
    defaults = dataclasses.asdict(config or IngestConfig())
    if manifest is None:
        return {
            k: requested.get(k) if requested.get(k) is not None else v for k, v in defaults.items()
        }
    built = {**dataclasses.asdict(IngestConfig()), **manifest["config"]}
    for key in ("embedder", "backend", "chunk_tokens", "chunk_overlap"):
        want = requested.get(key)
        if want is not None and want != built[key]:
            raise RagtuneError(
                f"Knowledge base {name!r} was built with {key}={built[key]!r}, not {want!r}",
                f"drop the flag, or re-create it with --rebuild to use {key}={want!r}",
            )
    for key in ("max_file_mb", "batch_size"):  # per-run settings
        built[key] = requested[key] if requested.get(key) is not None else defaults[key]
    return built


def _under(source: str, roots: Sequence[Path]) -> bool:
    for root in roots:
        r = str(root.resolve())
        if source == r or source.startswith(r.rstrip("/") + "/"):
            return True
    return False


class _Writer:
    """Stages new and changed documents into the store in bounded groups.

    Documents are chunked as they come; every ``EMBED_GROUP`` chunks are embedded and
    appended (an updated document's old rows are deleted first), so memory holds one
    group, never the corpus. The embedder and a new store are created on first use, so an
    ingest that changes nothing loads neither.
    """

    def __init__(
        self,
        name: str,
        store: WritableStore | None,
        tokenizer: Any,
        cfg: dict[str, Any],
        device: str,
        progress: Progress | None,
    ) -> None:
        self.name, self.store, self.tokenizer = name, store, tokenizer
        self.cfg, self.device, self.progress = cfg, device, progress
        self.emb: Any = None
        self.docs: list[Document] = []
        self.replaced: list[str] = []  # updated documents in the group: delete before adding
        self.chunks: list[Chunk] = []
        self.queued = 0  # chunks seen so far (the embed bar's total)
        self.embedded = 0
        self.max_group_chunks = 0  # the largest group embedded (for tests: memory is bounded)

    def _open(self) -> WritableStore:
        if self.emb is None:
            from ragtune.retrieve.dense import load_embedder

            self.emb = load_embedder(
                str(self.cfg["embedder"]), backend=self.cfg["backend"], device=self.device
            )
        if self.store is None:
            self.store = new_store(self.name, self.emb.dim)
        return self.store

    def add(self, doc: Document, replaces: bool) -> None:
        self.docs.append(doc)
        if replaces:
            self.replaced.append(doc.doc_id)
        big = self.progress is not None and len(doc.text) >= BIG_DOCUMENT_CHARS
        done = 0
        for chunk in iter_chunks(
            doc, self.tokenizer, int(self.cfg["chunk_tokens"]), int(self.cfg["chunk_overlap"])
        ):
            self.chunks.append(chunk)
            self.queued += 1
            if len(self.chunks) >= EMBED_GROUP:
                self.flush()
                if big and self.progress:
                    self.progress(f"doc:{doc.doc_id}", chunk.end - done, len(doc.text))
                    done = chunk.end
        if big and self.progress:
            self.progress(f"doc:{doc.doc_id}", len(doc.text) - done, len(doc.text))

    def remove(self, doc_ids: list[str]) -> None:
        self._open().delete_documents(doc_ids)

    def flush(self) -> None:
        if not self.docs and not self.chunks:
            return
        from ragtune.retrieve.dense import embed

        store = self._open()
        store.delete_documents(self.replaced)
        report = self.progress
        vectors = embed(
            self.emb,
            [index_text(c) for c in self.chunks],
            batch_size=int(self.cfg["batch_size"]),
            progress=(lambda n: report("embed", n, self.queued)) if report else None,
        )
        store.add(self.docs, self.chunks, vectors)
        self.max_group_chunks = max(self.max_group_chunks, len(self.chunks))
        self.embedded += len(self.chunks)
        self.docs, self.replaced, self.chunks = [], [], []


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
    defaults: IngestConfig | None = None,
) -> IngestReport:
    """Add ``paths`` (files and folders) to knowledge base ``kb``, creating it if needed.

    Settings left as None come from the knowledge base (or ``defaults``, the ``[ingest]``
    section of config.toml, for a new one; per-run ones, max_file_mb and batch_size, from
    ``defaults`` always);
    changing the embedder or chunking of an existing knowledge base needs ``rebuild``.
    Files are read, chunked, embedded and written one bounded group at a time, so memory
    does not grow with the size of a file or the number of files.
    """
    return _ingest(
        paths,
        kb,
        {
            "embedder": embedder,
            "backend": backend,
            "chunk_tokens": chunk_tokens,
            "chunk_overlap": chunk_overlap,
            "max_file_mb": max_file_mb,
            "batch_size": batch_size,
        },
        attributes,
        prune,
        rebuild,
        device,
        progress,
        defaults,
    )[0]


def _ingest(
    paths: Sequence[Path],
    kb: str,
    requested: dict[str, Any],
    attributes: Mapping[str, str] | None,
    prune: bool,
    rebuild: bool,
    device: str,
    progress: Progress | None,
    defaults: IngestConfig | None = None,
) -> tuple[IngestReport, _Writer | None]:
    t0 = time.perf_counter()
    kb_path(kb)  # rejects a bad name
    report = IngestReport(kb=kb)
    for key in ("chunk_tokens", "chunk_overlap"):
        if requested[key] is not None and requested[key] < 0:
            raise RagtuneError(f"{key} must be positive")
    files = list(discover(paths, on_skip=lambda what, why: report.skipped.append((what, why))))
    with kb_lock(kb):
        manifest = None if rebuild else load_manifest(kb)
        cfg = _settings(manifest, requested, kb, defaults)
        check_sizes(int(cfg["chunk_tokens"]), int(cfg["chunk_overlap"]))
        embedder_dir = resolve_embedder(cfg["embedder"])
        if manifest is not None:
            _check_embedder(manifest, embedder_dir, kb)

        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(embedder_dir))
        existing: dict[str, tuple[str, str]] = {}
        store: WritableStore | None = None
        if manifest is not None:
            store = open_store(kb, manifest)
            existing = store.doc_index()
        writer = _Writer(kb, store, tokenizer, cfg, device, progress)

        # 1. Read each file; new and changed documents go to the writer as they come.
        seen: dict[str, str] = {}  # doc_id -> source, for this run
        skipped_sources: set[str] = set()
        max_bytes = int(float(cfg["max_file_mb"]) * 2**20)
        for file, root in files:
            try:
                for item in iter_file(file, root, max_bytes=max_bytes, attributes=attributes):
                    if isinstance(item, tuple):
                        report.skipped.append(item)
                        continue
                    doc = item
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
                    writer.add(doc, replaces=old is not None)
            except SkipFile as e:
                report.skipped.append((str(file), e.reason))
                skipped_sources.add(str(file.resolve()))
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

        if manifest is not None and not (report.added or report.updated or report.removed):
            report.documents, report.chunks = store.count() if store else (0, 0)
            report.seconds = time.perf_counter() - t0
            return report, None  # nothing changed: leave the knowledge base untouched

        # 3. Write what is left and publish; nothing is visible until the manifest changes.
        if report.removed:
            writer.remove(report.removed)
        writer.flush()
        store = writer._open()
        report.chunks_added = writer.embedded

        new = manifest or new_manifest(
            kb,
            config={k: cfg[k] for k in ("embedder", "backend", "chunk_tokens", "chunk_overlap")},
            embedder={
                "name": str(cfg["embedder"]),
                "path": str(embedder_dir),
                "fingerprint": model_fingerprint(embedder_dir),
                "backend": cfg["backend"],
                "dim": writer.emb.dim,
                "max_seq_length": writer.emb.max_seq_length,
            },
        )
        report.documents, report.chunks = publish(kb, store, new)
    report.seconds = time.perf_counter() - t0
    return report, writer


def remove_documents(kb: str, doc_ids: Sequence[str]) -> IngestReport:
    """Remove documents from knowledge base ``kb`` (ids it does not hold are ignored)."""
    t0 = time.perf_counter()
    report = IngestReport(kb=kb)
    with kb_lock(kb):
        manifest = load_manifest(kb)
        if manifest is None:
            return report
        store: WritableStore = open_store(kb, manifest)
        report.removed = sorted(set(doc_ids) & set(store.doc_index()))
        if report.removed:
            store.delete_documents(report.removed)
            report.documents, report.chunks = publish(kb, store, manifest)
        else:
            report.documents, report.chunks = store.count()
    report.seconds = time.perf_counter() - t0
    return report


def _check_embedder(manifest: dict[str, Any], embedder_dir: Path, name: str) -> None:
    if model_fingerprint(embedder_dir) != manifest["embedder"]["fingerprint"]:
        raise RagtuneError(
            f"The embedder of knowledge base {name!r} has changed since it was built",
            "re-create the knowledge base with --rebuild",
        )
