"""The keyword (BM25) index of a knowledge base, kept on disk in immutable segments.

Memory does not grow with the size of the knowledge base. As in Lucene, the index is a
list of *segments* (see segment.py: flat numpy arrays, written once, memory-mapped when
read) in a shared folder, plus a small *snapshot* folder naming the segments of one
version of the index and, per segment, the rows deleted since it was written
(``deleted-<segment>.npy``). Ingest buffers at most ``SEGMENT_POSTINGS`` postings in
memory and then writes a segment; removing documents never rewrites one. When a snapshot
is saved, runs of adjacent small or mostly deleted segments are merged (adjacent only,
so row order is kept; each merge at most ``SEGMENT_POSTINGS`` postings, so merging is
bounded too). A query reads only its own terms' postings.

Scores are those of :class:`ragtune.retrieve.bm25.BM25Index` over the live rows in order
(the same N, df, avgdl, tf and |d|): Lucene BM25, see bm25.py. The only difference is
the order in which a query's terms are added up (sorted by term, not by first
appearance), which can change the last bit of a score for queries of three terms or more.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from ragtune.errors import RagtuneError
from ragtune.io import fsync_dir, write_json_atomic
from ragtune.retrieve.bm25 import (
    BM25Index,
    _check_params,
    _count_matrix,
    idf,
    masked_top_k,
    tf_saturation,
    tokenize,
)
from ragtune.retrieve.segment import (
    FORMAT_VERSION,
    Segment,
    id_hash,
    merge_segments,
    save_npy,
    segment_from_bm25,
)
from ragtune.types import Chunk

SEGMENTS_DIR = "keyword-segments"
SEGMENT_POSTINGS = 1 << 21  # postings buffered before a segment is written
SMALL_SEGMENT = SEGMENT_POSTINGS // 2  # adjacent segments below this get merged
MAX_SMALL_SEGMENTS = 8


@dataclass
class _Pending:
    """Rows added but not yet in a segment: per-group count matrices sharing one vocab."""

    vocab: dict[str, int] = field(default_factory=dict)
    parts: list[Any] = field(default_factory=list)  # CSR count matrices, (n_group, V_then)
    lengths: list[np.ndarray] = field(default_factory=list)
    chunk_ids: list[str] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    nnz: int = 0

    def add(self, texts: Sequence[str], chunk_ids: Sequence[str], doc_ids: Sequence[str]) -> None:
        counts, lengths = _count_matrix([tokenize(t) for t in texts], self.vocab)
        self.parts.append(counts.tocsr())  # CSR stacks by rows without a sort
        self.lengths.append(lengths)
        self.chunk_ids.extend(chunk_ids)
        self.doc_ids.extend(doc_ids)
        self.nnz += int(counts.nnz)

    def segment(self) -> Segment:
        width = len(self.vocab)
        parts = [
            sparse.csr_matrix((p.data, p.indices, p.indptr), (p.shape[0], width))
            for p in self.parts
        ]
        tf = sparse.vstack(parts, format="csr", dtype=np.float32)  # (n_rows, width)
        del parts
        self.parts.clear()
        bm25 = BM25Index(self.vocab, tf, np.concatenate(self.lengths))
        return segment_from_bm25(bm25, self.chunk_ids, self.doc_ids)


class KeywordIndex:
    """BM25 over the chunk texts of a knowledge base; rows are chunks in insertion order.

    Reading touches only the queried terms' postings and per-row arrays (4 bytes of
    length per row, plus a row map for segments with deletions). Writing (``add``,
    ``remove_documents``, ``save``) is for one writer at a time, as the store ensures.
    """

    def __init__(
        self,
        segments_dir: Path,
        segments: Sequence[Segment] = (),
        deleted: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.segments_dir = segments_dir
        self.segments = list(segments)
        self.deleted = [np.asarray(d, dtype=np.int64) for d in deleted or []] or [
            np.zeros(0, np.int64) for _ in self.segments
        ]
        self._pending = _Pending()
        self._reader: _Reader | None = None

    @classmethod
    def empty(cls, segments_dir: Path) -> KeywordIndex:
        return cls(segments_dir)

    @property
    def n_docs(self) -> int:
        """Live rows, including rows added but not yet saved."""
        live = sum(s.n_rows - len(d) for s, d in zip(self.segments, self.deleted, strict=True))
        return live + len(self._pending.chunk_ids)

    @property
    def chunk_ids(self) -> list[str]:
        """Every live row's chunk id, in row order (O(rows) memory: for copying a store)."""
        self._seal()
        return [seg.chunk_id(r) for seg, r in self._live_rows()]

    def _live_rows(self) -> Iterator[tuple[Segment, int]]:
        for seg, deleted in zip(self.segments, self.deleted, strict=True):
            gone = set(deleted.tolist())
            yield from ((seg, r) for r in range(seg.n_rows) if r not in gone)

    # -- writing ----------------------------------------------------------------------

    def add(self, chunks: Sequence[Chunk]) -> None:
        """Append chunks as rows; a segment is written whenever the buffer is full."""
        from ragtune.retrieve.store import index_text

        self._pending.add(
            [index_text(c) for c in chunks],
            [c.chunk_id for c in chunks],
            [c.doc_id for c in chunks],
        )
        self._reader = None
        if self._pending.nnz >= SEGMENT_POSTINGS:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending.chunk_ids:
            self._append(self._pending.segment())
            self.segments[-1] = self.segments[-1].write(self._new_segment_folder())
        self._pending = _Pending()

    def _seal(self) -> None:
        """Make buffered rows searchable (as an in-memory segment, written on save)."""
        if self._pending.chunk_ids:
            self._append(self._pending.segment())
            self._pending = _Pending()

    def _append(self, seg: Segment) -> None:
        self.segments.append(seg)
        self.deleted.append(np.zeros(0, np.int64))
        self._reader = None

    def _new_segment_folder(self) -> Path:
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        return self.segments_dir / f"seg-{secrets.token_hex(8)}"

    def remove_documents(self, doc_ids: set[str]) -> None:
        """Mark the rows of ``doc_ids`` deleted (segments themselves never change)."""
        if not doc_ids:
            return
        self._seal()
        wanted = id_hash(sorted(doc_ids))
        for i, seg in enumerate(self.segments):
            hits = np.flatnonzero(np.isin(np.asarray(seg.arrays["doc_hash"]), wanted))
            hits = np.array([r for r in hits if seg.doc_id(int(r)) in doc_ids], dtype=np.int64)
            if hits.size:
                self.deleted[i] = np.union1d(self.deleted[i], hits)
        self._reader = None

    def save(self, folder: Path) -> None:
        """Write unsaved rows as segments, merge small or mostly deleted ones, and write
        the snapshot (segment list + deleted rows) to ``folder`` atomically."""
        self._seal()
        self._compact()
        for i, seg in enumerate(self.segments):
            if seg.folder is None:
                self.segments[i] = seg.write(self._new_segment_folder())
        tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            listing = []
            for seg, deleted in zip(self.segments, self.deleted, strict=True):
                entry: dict[str, Any] = {"name": seg.name, "rows": seg.n_rows, "deleted": None}
                if deleted.size:
                    entry["deleted"] = f"deleted-{seg.name}.npy"
                    save_npy(tmp / entry["deleted"], deleted)
                listing.append(entry)
            write_json_atomic(
                tmp / "index.json",
                {"format_version": FORMAT_VERSION, "kind": "bm25-lucene", "segments": listing},
            )
        except BaseException:  # e.g. a full disk: leave nothing half-written behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if folder.exists():  # left by a writer that died before publishing it
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        fsync_dir(folder.parent)

    def _compact(self) -> None:
        """Merge runs of adjacent small or mostly deleted segments (each run's postings
        at most SEGMENT_POSTINGS, so merging is bounded too); drop wholly deleted ones."""
        keep = [
            (s, d) for s, d in zip(self.segments, self.deleted, strict=True) if len(d) < s.n_rows
        ]

        def mergeable(seg: Segment, deleted: np.ndarray) -> bool:
            return seg.nnz < SMALL_SEGMENT or 2 * len(deleted) > seg.n_rows

        small = sum(mergeable(s, d) for s, d in keep)
        out: list[tuple[Segment, np.ndarray]] = []
        run: list[tuple[Segment, np.ndarray]] = []

        def close_run() -> None:
            many = len(run) > 1 and small > MAX_SMALL_SEGMENTS
            if many or (run and 2 * len(run[0][1]) > run[0][0].n_rows):
                out.append((merge_segments(run), np.zeros(0, np.int64)))
            else:
                out.extend(run)
            run.clear()

        for seg, deleted in keep:
            if not mergeable(seg, deleted):
                close_run()
                out.append((seg, deleted))
            else:
                if run and sum(s.nnz for s, _ in run) + seg.nnz > SEGMENT_POSTINGS:
                    close_run()
                run.append((seg, deleted))
        close_run()
        self.segments = [s for s, _ in out]
        self.deleted = [d for _, d in out]
        self._reader = None

    @classmethod
    def load(cls, folder: Path, segments_dir: Path) -> KeywordIndex:
        """Open a snapshot written by :meth:`save` (or a format-1 folder, read whole)."""
        if (folder / "rows.json").exists():
            return cls._load_v1(folder, segments_dir)
        try:
            index = json.loads((folder / "index.json").read_text())
        except (OSError, ValueError):
            raise RagtuneError(
                f"The keyword index at {folder} is missing or unreadable",
                "re-create the knowledge base with ragtune ingest ... --rebuild",
            ) from None
        if int(index.get("format_version", 0)) != FORMAT_VERSION:
            raise RagtuneError(
                f"Keyword index at {folder} has an unknown format version",
                "re-create the knowledge base with this ragtune version",
            )
        segments, deleted = [], []
        for entry in index["segments"]:
            segments.append(Segment.open(segments_dir / entry["name"]))
            d = entry["deleted"]
            deleted.append(np.load(folder / d) if d else np.zeros(0, np.int64))
        return cls(segments_dir, segments, deleted)

    @classmethod
    def _load_v1(cls, folder: Path, segments_dir: Path) -> KeywordIndex:
        rows = json.loads((folder / "rows.json").read_text())
        if int(rows.get("format_version", 0)) != 1:
            raise RagtuneError(
                f"Keyword index at {folder} has an unknown format version",
                "re-create the knowledge base with this ragtune version",
            )
        bm25 = BM25Index.load(folder / "bm25")
        seg = segment_from_bm25(bm25, rows["chunk_ids"], rows["doc_ids"])
        return cls(segments_dir, [seg] if seg.n_rows else [])

    # -- reading ----------------------------------------------------------------------

    def scores(self, query: str, k1: float = 1.5, b: float = 0.75) -> np.ndarray:
        """BM25 score of every live row for ``query``: a (n_docs,) float64 array."""
        self._seal()
        if self._reader is None:
            self._reader = _Reader(self.segments, self.deleted)
        return self._reader.scores(query, k1, b)

    def top_k(
        self, query: str, k: int, k1: float = 1.5, b: float = 0.75, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best live rows with a positive score (rows, scores), ties by row."""
        return masked_top_k(self.scores(query, k1, b), k, mask)

    def chunk_id(self, row: int) -> str:
        """The chunk id of live row ``row``."""
        self._seal()
        if self._reader is None:
            self._reader = _Reader(self.segments, self.deleted)
        i, local = self._reader.locate(row)
        return self.segments[i].chunk_id(local)

    def mask_of(self, chunk_ids: Sequence[str]) -> np.ndarray:
        """A (n_docs,) boolean array, True at the rows of ``chunk_ids``."""
        self._seal()
        if self._reader is None:
            self._reader = _Reader(self.segments, self.deleted)
        wanted_ids = set(chunk_ids)
        wanted = id_hash(sorted(wanted_ids))
        parts = []
        for seg, live in zip(self.segments, self._reader.live, strict=True):
            hit = np.isin(np.asarray(seg.arrays["chunk_hash"]), wanted)
            for r in np.flatnonzero(hit):  # a 64-bit hash match, checked against the id
                hit[r] = seg.chunk_id(int(r)) in wanted_ids
            parts.append(hit if live is None else hit[live])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


class _Reader:
    """Per-snapshot state for scoring: live row maps and the live rows' lengths."""

    def __init__(self, segments: Sequence[Segment], deleted: Sequence[np.ndarray]) -> None:
        self.segments = segments
        self.live: list[np.ndarray | None] = []  # live local rows, None when all are
        self.local_to_live: list[np.ndarray | None] = []  # local row -> live index or -1
        starts, lens, n = [], [], 0
        for seg, gone in zip(segments, deleted, strict=True):
            doc_len = np.asarray(seg.arrays["doc_len"])
            if gone.size:
                keep = np.ones(seg.n_rows, dtype=bool)
                keep[gone] = False
                live = np.flatnonzero(keep)
                to_live = np.full(seg.n_rows, -1, dtype=np.int64)
                to_live[live] = np.arange(len(live))
                self.live.append(live)
                self.local_to_live.append(to_live)
                lens.append(doc_len[live])
            else:
                self.live.append(None)
                self.local_to_live.append(None)
                lens.append(doc_len)
            starts.append(n)
            n += len(lens[-1])
        self.starts = np.asarray([*starts, n], dtype=np.int64)  # (n_segments + 1,)
        # float32 like BM25Index.doc_len, so avgdl is computed exactly as there
        self.doc_len = np.concatenate(lens) if lens else np.zeros(0, np.float32)  # (n_docs,)
        self.n_docs = n

    def locate(self, row: int) -> tuple[int, int]:
        """(segment, local row) of live row ``row``."""
        i = int(np.searchsorted(self.starts, row, side="right")) - 1
        live = self.live[i]
        local = row - int(self.starts[i])
        return i, int(live[local]) if live is not None else local

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """(live rows, raw counts) of ``term`` over all segments, rows ascending."""
        rows, tfs = [], []
        for i, seg in enumerate(self.segments):
            local, tf = seg.postings(term)
            if not len(local):
                continue
            to_live = self.local_to_live[i]
            if to_live is not None:
                live = to_live[local]
                keep = live >= 0
                local, tf, live = local[keep], tf[keep], live[keep]
            else:
                live = np.asarray(local, dtype=np.int64)
            rows.append(live + self.starts[i])
            tfs.append(np.asarray(tf))
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(rows), np.concatenate(tfs)

    def scores(self, query: str, k1: float, b: float) -> np.ndarray:
        _check_params(k1, b)
        out = np.zeros(self.n_docs, dtype=np.float64)  # (n_docs,)
        if self.n_docs == 0:
            return out
        terms, repeats = np.unique(np.asarray(tokenize(query), dtype=object), return_counts=True)
        pairs = zip(terms.tolist(), repeats.tolist(), strict=True)
        found = [(str(t), int(r), *self.postings(str(t))) for t, r in pairs]
        found = [f for f in found if len(f[2])]
        if not found:
            return out
        avgdl = float(self.doc_len.mean())
        df = np.array([len(rows) for _, _, rows, _ in found], dtype=np.float64)  # (n_terms_q,)
        weights = idf(df, self.n_docs) * np.array([r for _, r, _, _ in found])  # (n_terms_q,)
        for (_, _, rows, tf), weight in zip(found, weights, strict=True):
            tf64 = tf.astype(np.float64)
            out[rows] += weight * tf_saturation(tf64, self.doc_len[rows], avgdl, k1, b)
        return out
