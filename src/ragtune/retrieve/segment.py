"""Segments of the keyword index: immutable folders of flat numpy arrays, memory-mapped.

A segment holds the BM25 postings of consecutive rows (chunks) of a knowledge base::

    terms.bin, term_offsets.npy      the segment's terms, sorted, "\\n"-joined UTF-8
    indptr.npy, rows.npy, tf.npy     postings per term: local row ids and raw counts
    doc_len.npy                      tokens per row
    chunk_ids.bin/chunk_offsets.npy, doc_ids.bin/doc_offsets.npy   row -> ids
    chunk_hash.npy, doc_hash.npy     64-bit hashes of the ids, for vectorised look-ups
    segment.json                     format version, counts and each file's size

It is written once (to a temporary folder renamed into place) and never changed; see
keywords.py for how segments make up an index.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from ragtune.errors import RagtuneError
from ragtune.io import fsync_dir, write_atomic, write_json_atomic
from ragtune.retrieve.bm25 import BM25Index

FORMAT_VERSION = 2  # of the keyword index; 1 was one in-memory BM25 matrix + rows.json

_ARRAYS: tuple[str, ...] = ("term_offsets", "indptr", "rows", "tf", "doc_len")
_ARRAYS += ("chunk_offsets", "doc_offsets", "chunk_hash", "doc_hash")
_BLOBS = ("terms", "chunk_ids", "doc_ids")


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through :func:`ragtune.io.write_atomic` (whole or not at all, fsynced)."""
    write_atomic(path, lambda fh: np.save(fh, array))


def id_hash(values: Sequence[str]) -> np.ndarray:
    """64-bit BLAKE2b of each string: a (n,) uint64 array for vectorised id look-ups."""
    out = np.empty(len(values), dtype=np.uint64)
    for i, v in enumerate(values):
        out[i] = int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little")
    return out


def _blob(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of ``strings`` concatenated, and their (n + 1,) int64 offsets."""
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


class _Strings(Sequence[bytes]):
    """The i-th UTF-8 string of a blob, without decoding the others (for ``bisect``).
    ``sep`` is the length of the separator after each string (1 for the "\n"-joined
    terms)."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, sep: int = 0) -> None:
        self.blob, self.offsets, self.sep = blob, offsets, sep

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: Any) -> Any:
        return self.blob[int(self.offsets[i]) : int(self.offsets[i + 1]) - self.sep].tobytes()


@dataclass(frozen=True, eq=False)
class Segment:
    """One immutable segment: arrays in memory or memory-mapped from ``folder``."""

    arrays: dict[str, np.ndarray]
    folder: Path | None = None  # None until written

    @property
    def n_rows(self) -> int:
        return len(self.arrays["doc_len"])

    @property
    def nnz(self) -> int:
        return len(self.arrays["rows"])

    @property
    def name(self) -> str | None:
        return self.folder.name if self.folder else None

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """(local rows, raw counts) of ``term``; empty arrays when the segment lacks it."""
        terms = _Strings(self.arrays["terms"], self.arrays["term_offsets"], sep=1)
        key = term.encode("utf-8")
        i = bisect.bisect_left(terms, key)
        if i == len(terms) or terms[i] != key:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        start, end = int(self.arrays["indptr"][i]), int(self.arrays["indptr"][i + 1])
        return self.arrays["rows"][start:end], self.arrays["tf"][start:end]

    def chunk_id(self, row: int) -> str:
        return str(_Strings(self.arrays["chunk_ids"], self.arrays["chunk_offsets"])[row], "utf-8")

    def doc_id(self, row: int) -> str:
        return str(_Strings(self.arrays["doc_ids"], self.arrays["doc_offsets"])[row], "utf-8")

    def terms(self) -> list[str]:
        raw = self.arrays["terms"].tobytes().decode("utf-8")
        return raw.split("\n") if raw else []

    def write(self, folder: Path) -> Segment:
        """Write into the new folder ``folder`` (via a temporary name); returns it opened."""
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for key in _ARRAYS:
                save_npy(tmp / f"{key}.npy", self.arrays[key])
            for key in _BLOBS:
                write_atomic(tmp / f"{key}.bin", self.arrays[key].tobytes())
            meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "rows": self.n_rows}
            meta["nnz"] = self.nnz
            meta["bytes"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
            write_json_atomic(tmp / "segment.json", meta)
            os.replace(tmp, folder)
        except BaseException:  # e.g. a full disk: leave nothing half-written behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(folder.parent)
        return Segment.open(folder)

    @classmethod
    def open(cls, folder: Path) -> Segment:
        try:
            meta = json.loads((folder / "segment.json").read_text())
            sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.name in meta["bytes"]}
        except (OSError, ValueError, KeyError):
            sizes, meta = {}, {"bytes": None}
        if sizes != meta["bytes"]:
            raise RagtuneError(
                f"The keyword index segment {folder} is missing or incomplete",
                "re-create the knowledge base with ragtune ingest ... --rebuild",
            )
        arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in _ARRAYS}
        for key in _BLOBS:
            path = folder / f"{key}.bin"
            size = path.stat().st_size
            arrays[key] = (
                np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
            )
        return cls(arrays, folder)


def segment_from_bm25(bm25: BM25Index, chunk_ids: Sequence[str], doc_ids: Sequence[str]) -> Segment:
    """An in-memory segment of ``bm25``'s rows: terms sorted, empty terms dropped.

    Peak memory is about three copies of the postings (CSR, its remapped column ids,
    the CSC result), never a COO sort.
    """
    n_rows, n_cols = bm25.tf.shape
    by_col = [""] * n_cols
    for term, col in bm25.vocab.items():
        by_col[col] = term
    order = sorted(range(n_cols), key=by_col.__getitem__)  # new column -> old column
    rank = np.empty(n_cols, dtype=np.int32)
    rank[order] = np.arange(n_cols, dtype=np.int32)  # old column -> new column
    csr = bm25.tf.tocsr()
    data = csr.data.astype(np.float32, copy=False)
    csr = sparse.csr_matrix((data, rank[csr.indices], csr.indptr), shape=(n_rows, n_cols))
    del data
    tf = csr.tocsc()  # rows ascending within each column
    del csr
    lengths = np.diff(tf.indptr)
    keep = lengths > 0  # terms whose rows were all removed have no postings left
    terms = [by_col[c] for c, k in zip(order, keep.tolist(), strict=True) if k]
    indptr = np.zeros(len(terms) + 1, dtype=np.int64)
    np.cumsum(lengths[keep], out=indptr[1:])
    # "\n"-joined, so terms() decodes the blob at once; term i is
    # terms[offsets[i] : offsets[i + 1] - 1]
    joined = np.frombuffer("\n".join(terms).encode("utf-8"), dtype=np.uint8)
    term_offsets = _blob(terms)[1] + np.arange(len(terms) + 1, dtype=np.int64)
    chunk_blob, chunk_offsets = _blob(chunk_ids)
    doc_blob, doc_offsets = _blob(doc_ids)
    arrays = {
        "terms": joined,
        "term_offsets": term_offsets,
        "indptr": indptr,
        "rows": tf.indices.astype(np.int32, copy=False),
        "tf": tf.data.astype(np.float32, copy=False),
        "doc_len": np.asarray(bm25.doc_len, dtype=np.float32),
        "chunk_ids": chunk_blob,
        "chunk_offsets": chunk_offsets,
        "doc_ids": doc_blob,
        "doc_offsets": doc_offsets,
        "chunk_hash": id_hash(chunk_ids),
        "doc_hash": id_hash(doc_ids),
    }
    return Segment(arrays)


def merge_segments(parts: Sequence[tuple[Segment, np.ndarray]]) -> Segment:
    """One in-memory segment of the live rows of ``parts`` ((segment, deleted rows)), in
    order. Memory: the parts' postings, so callers merge only small segments."""
    vocab: dict[str, int] = {}
    cols, rows, data, lens, chunk_ids, doc_ids = [], [], [], [], [], []
    offset = 0
    for seg, deleted in parts:
        live = np.ones(seg.n_rows, dtype=bool)
        live[deleted] = False
        new_row = np.cumsum(live) - 1  # (n_rows,) local row -> merged row (live rows only)
        seg_terms = seg.terms()
        colmap = np.array([vocab.setdefault(t, len(vocab)) for t in seg_terms], dtype=np.int64)
        counts = np.diff(np.asarray(seg.arrays["indptr"]))
        posting_col = np.repeat(colmap, counts)  # (nnz,)
        posting_row = np.asarray(seg.arrays["rows"])
        keep = live[posting_row]
        cols.append(posting_col[keep])
        rows.append(new_row[posting_row[keep]] + offset)
        data.append(np.asarray(seg.arrays["tf"])[keep])
        lens.append(np.asarray(seg.arrays["doc_len"])[live])
        for r in np.flatnonzero(live):
            chunk_ids.append(seg.chunk_id(int(r)))
            doc_ids.append(seg.doc_id(int(r)))
        offset += int(live.sum())
    tf = sparse.coo_matrix(
        (
            np.concatenate(data or [np.zeros(0, np.float32)]),
            (
                np.concatenate(rows or [np.zeros(0, np.int64)]),
                np.concatenate(cols or [np.zeros(0, np.int64)]),
            ),
        ),
        shape=(offset, len(vocab)),
    ).tocsc()
    doc_len = np.concatenate(lens) if lens else np.zeros(0, np.float32)
    return segment_from_bm25(BM25Index(vocab, tf, doc_len), chunk_ids, doc_ids)
