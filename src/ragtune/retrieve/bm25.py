"""Lucene BM25 over a sparse term-frequency matrix, scored at query time.

Scoring follows Lucene's BM25 as described by Kamphuis et al. 2020, "Which BM25 do you
mean? A large-scale reproducibility study of scoring variants" (ECIR), and as implemented
by bm25s (Lù 2024, "BM25S: Orders of magnitude faster lexical search via eager sparse
scoring", ``method="lucene"``)::

    idf(t)       = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score(t, d)  = idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    score(q, d)  = sum over the query's tokens t of score(t, d)

A query token that occurs twice counts twice, as in bm25s. Unlike bm25s, the index keeps
*raw* term frequencies and scores only the query terms' columns at query time, so ``k1``
and ``b`` are query-time parameters and adding or removing documents never rescores the
others (only ``N``, ``df`` and ``avgdl`` change, and they are read at query time).

Tokenization matches bm25s with ``stopwords="en"`` and PyStemmer's English stemmer:
lowercase, the scikit-learn token pattern, Lucene's English stop words, Snowball stems.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import Stemmer
from scipy import sparse

from ragtune import __version__
from ragtune.errors import RagtuneError
from ragtune.io import file_sha256, write_atomic, write_json_atomic

FORMAT_VERSION = "1.0"
NPZ_NAME = "bm25.npz"
MANIFEST_NAME = "bm25.json"

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (bm25s ``stopwords="en"``).
STOPWORDS_EN = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into",
        "is", "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then",
        "there", "these", "they", "this", "to", "was", "will", "with",
    }
)  # fmt: skip
_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn CountVectorizer's default pattern

_STEMMER = Stemmer.Stemmer("english")
_STEM_LOCK = threading.Lock()  # PyStemmer objects are not thread-safe
_STEMS: dict[str, str] = {}  # word -> stem; words repeat a lot, stemming is the slow part
_MAX_CACHED_STEMS = 500_000  # bounds the cache (~80 MB); cleared when full


def _stem_all(words: Iterable[str]) -> None:
    """Add the stems of ``words`` that are not cached yet to the cache."""
    new = [w for w in set(words) if w not in _STEMS]
    if not new:
        return
    with _STEM_LOCK:
        if len(_STEMS) + len(new) > _MAX_CACHED_STEMS:
            _STEMS.clear()
        _STEMS.update(zip(new, _STEMMER.stemWords(new), strict=True))


def tokenize(text: str) -> list[str]:
    """Lowercase, split on ``\\b\\w\\w+\\b``, drop English stop words, Snowball-stem."""
    words = [w for w in _TOKEN.findall(text.lower()) if w not in STOPWORDS_EN]
    try:
        return [_STEMS[w] for w in words]
    except KeyError:
        _stem_all(words)
        return [_STEMS.get(w) or _stem_one(w) for w in words]


def _stem_one(word: str) -> str:
    """Stem one word outside the cache (when another thread just cleared it)."""
    with _STEM_LOCK:
        stem: str = _STEMMER.stemWord(word)
    return stem


# --- Lucene BM25, as pure functions --------------------------------------------------------


def idf(df: np.ndarray, n_docs: int) -> np.ndarray:
    """Lucene idf, ``ln(1 + (N - df + 0.5) / (df + 0.5))`` (Kamphuis et al. 2020, table 1)."""
    return np.log1p((n_docs - df + 0.5) / (df + 0.5))


def tf_saturation(
    tf: np.ndarray, doc_len: np.ndarray, avgdl: float, k1: float, b: float
) -> np.ndarray:
    """Lucene's term-frequency part, ``tf / (tf + k1 * (1 - b + b * |d| / avgdl))``."""
    return tf / (tf + k1 * (1.0 - b + b * doc_len / avgdl))


def _check_params(k1: float, b: float) -> None:
    if not k1 >= 0.0:
        raise RagtuneError(f"BM25 k1 must be >= 0, got {k1}", "the usual value is 1.2 to 2.0")
    if not 0.0 <= b <= 1.0:
        raise RagtuneError(f"BM25 b must be between 0 and 1, got {b}", "the usual value is 0.75")


# --- the index -----------------------------------------------------------------------------


def _count_matrix(
    token_lists: Sequence[list[str]], vocab: dict[str, int]
) -> tuple[sparse.csc_matrix, np.ndarray]:
    """Raw term counts of tokenized texts, adding unseen terms to ``vocab`` in place.

    Returns the (n_texts, len(vocab)) CSC count matrix and the (n_texts,) token counts.
    """
    cols: list[int] = []
    lengths = np.zeros(len(token_lists), dtype=np.int64)  # (n,)
    setdefault = vocab.setdefault
    for i, tokens in enumerate(token_lists):
        cols.extend([setdefault(t, len(vocab)) for t in tokens])
        lengths[i] = len(tokens)
    rows = np.repeat(np.arange(len(token_lists), dtype=np.int64), lengths)  # (n_tokens,)
    data = np.ones(len(cols), dtype=np.float32)
    # COO -> CSC sums repeated (row, col) pairs into counts.
    counts = sparse.coo_matrix(
        (data, (rows, np.asarray(cols, dtype=np.int64))), shape=(len(token_lists), len(vocab))
    ).tocsc()
    counts.sum_duplicates()
    return counts, lengths.astype(np.float32)


def _with_columns(matrix: sparse.csc_matrix, n_cols: int) -> sparse.csc_matrix:
    """The same CSC matrix widened to ``n_cols`` columns (new columns empty)."""
    extra = n_cols - matrix.shape[1]
    if extra == 0:
        return matrix
    indptr = np.concatenate([matrix.indptr, np.full(extra, matrix.indptr[-1])])
    return sparse.csc_matrix((matrix.data, matrix.indices, indptr), shape=(matrix.shape[0], n_cols))


def _empty_tf(n_terms: int = 0) -> sparse.csc_matrix:
    return sparse.csc_matrix((0, n_terms), dtype=np.float32)


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous; compare scores instead
class BM25Index:
    """Raw term frequencies of a corpus; rows are documents (chunks), columns are terms.

    Instances are immutable: ``add`` and ``remove`` return a new index and leave this one
    as it was.
    """

    vocab: dict[str, int] = field(default_factory=dict)  # term -> column
    tf: sparse.csc_matrix = field(default_factory=_empty_tf)  # (n_docs, n_terms) raw counts
    doc_len: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (n_docs,)

    @property
    def n_docs(self) -> int:
        return int(self.tf.shape[0])

    @classmethod
    def build(cls, texts: Sequence[str]) -> BM25Index:
        return cls().add(texts)

    def add(self, texts: Sequence[str]) -> BM25Index:
        """A new index with ``texts`` appended as rows ``n_docs, n_docs + 1, ...``."""
        vocab = dict(self.vocab)
        new_tf, new_len = _count_matrix([tokenize(t) for t in texts], vocab)
        old = _with_columns(self.tf, len(vocab))
        tf = sparse.vstack([old, new_tf], format="csc", dtype=np.float32)
        return BM25Index(vocab, tf, np.concatenate([self.doc_len, new_len]))

    def remove(self, rows: np.ndarray) -> BM25Index:
        """A new index without the given row ids; the other rows keep their order.

        Terms whose documents are all removed keep their (now empty) column.
        """
        drop = np.asarray(rows, dtype=np.int64)  # (n_drop,)
        if drop.size and (drop.min() < 0 or drop.max() >= self.n_docs):
            raise RagtuneError(f"Row ids out of range for a BM25 index of {self.n_docs} rows")
        keep = np.ones(self.n_docs, dtype=bool)
        keep[drop] = False
        tf = self.tf.tocsr()[keep].tocsc()
        return BM25Index(dict(self.vocab), tf, self.doc_len[keep])

    def scores(self, query: str, k1: float = 1.5, b: float = 0.75) -> np.ndarray:
        """BM25 score of every row for ``query``: a (n_docs,) float64 array."""
        _check_params(k1, b)
        out = np.zeros(self.n_docs, dtype=np.float64)  # (n_docs,)
        cols = [self.vocab[t] for t in tokenize(query) if t in self.vocab]
        if not cols or self.n_docs == 0:
            return out
        avgdl = float(self.doc_len.mean())
        terms, repeats = np.unique(np.asarray(cols), return_counts=True)  # (n_terms_q,) each
        indptr, indices, data = self.tf.indptr, self.tf.indices, self.tf.data
        df = (indptr[terms + 1] - indptr[terms]).astype(np.float64)  # (n_terms_q,)
        weights = idf(df, self.n_docs) * repeats  # (n_terms_q,)
        for term, weight in zip(terms, weights, strict=True):
            start, end = indptr[term], indptr[term + 1]
            rows = indices[start:end]  # rows containing the term, each once
            tf = data[start:end].astype(np.float64)
            out[rows] += weight * tf_saturation(tf, self.doc_len[rows], avgdl, k1, b)
        return out

    def top_k(
        self,
        query: str,
        k: int,
        k1: float = 1.5,
        b: float = 0.75,
        mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows with a positive score: (row ids, scores), best first.

        ``mask`` is a (n_docs,) boolean allow-list (e.g. a metadata filter). Ties are broken
        by row id, so results are deterministic.
        """
        return masked_top_k(self.scores(query, k1, b), k, mask)

    # --- persistence ---------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write ``bm25.npz`` and its manifest ``bm25.json`` into ``folder``, atomically each."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        terms = sorted(self.vocab, key=self.vocab.__getitem__)
        if any("\n" in t for t in terms):  # tokens are \w+, so this is a bug, not user error
            raise ValueError("BM25 vocabulary terms must not contain newlines")
        arrays = {
            "data": self.tf.data.astype(np.float32),
            "indices": self.tf.indices.astype(np.int64),
            "indptr": self.tf.indptr.astype(np.int64),
            "shape": np.asarray(self.tf.shape, dtype=np.int64),
            "doc_len": self.doc_len.astype(np.float32),
            "terms": np.frombuffer("\n".join(terms).encode("utf-8"), dtype=np.uint8),
        }
        npz_path = folder / NPZ_NAME
        write_atomic(npz_path, lambda fh: np.savez(fh, **arrays))
        manifest = {
            "format_version": FORMAT_VERSION,
            "ragtune_version": __version__,
            "kind": "bm25-lucene",
            "n_docs": self.n_docs,
            "n_terms": len(terms),
            "nnz": int(self.tf.nnz),
            "npz_sha256": file_sha256(npz_path),
        }
        write_json_atomic(folder / MANIFEST_NAME, manifest)

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        folder = Path(folder)
        manifest = _read_manifest(folder / MANIFEST_NAME)
        npz_path = folder / NPZ_NAME
        if not npz_path.exists() or file_sha256(npz_path) != manifest.get("npz_sha256"):
            raise RagtuneError(
                f"The BM25 index in {folder} is incomplete or does not match its manifest",
                "it was probably interrupted while being written; rebuild the index",
            )
        with np.load(npz_path, allow_pickle=False) as z:
            raw = bytes(z["terms"]).decode("utf-8")
            terms = raw.split("\n") if raw else []
            shape = tuple(int(x) for x in z["shape"])
            tf = sparse.csc_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
            doc_len = z["doc_len"]
        return cls({t: i for i, t in enumerate(terms)}, tf, doc_len)


def masked_top_k(
    scores: np.ndarray, k: int, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k_positive` of ``scores`` (n_docs,) where the allow-list ``mask`` is True."""
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != scores.shape:
            raise RagtuneError(
                f"The BM25 filter mask has shape {mask.shape}, expected ({len(scores)},)"
            )
        scores = np.where(mask, scores, 0.0)
    return top_k_positive(scores, k)


def top_k_positive(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest positive ``scores``, ties by lower index."""
    candidates = np.flatnonzero(scores > 0)  # (n_pos,)
    if k <= 0 or candidates.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=scores.dtype)
    if candidates.size > k:
        # Keep every candidate tied with the k-th best, so the tie-break below is exact.
        kth = np.partition(scores[candidates], candidates.size - k)[candidates.size - k]
        candidates = candidates[scores[candidates] >= kth]
    order = np.lexsort((candidates, -scores[candidates]))[:k]  # score desc, then row asc
    rows = candidates[order]
    return rows.astype(np.int64), scores[rows]


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RagtuneError(
            f"No BM25 index at {path.parent} ({path.name} is missing)", "build the index first"
        ) from None
    except json.JSONDecodeError as e:
        raise RagtuneError(f"The BM25 manifest {path} is not valid JSON: {e}") from None
    version = str(manifest.get("format_version", ""))
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise RagtuneError(
            f"The BM25 index at {path.parent} has format version {version or '?'}, "
            f"this ragtune reads {FORMAT_VERSION.split('.')[0]}.x",
            "rebuild the index with this version of ragtune, or use the ragtune that made it",
        )
    return manifest
