"""Finding files and turning each into ``Document`` records: txt, md, html, pdf, BEIR jsonl.

Every loader is strict about what it accepts and explains what it rejects: a bad file
raises ``SkipFile`` with a one-line reason (the pipeline reports it and carries on), and
no other exception escapes for bad input. A BEIR corpus (``.jsonl``) is many documents,
so a bad *line* does not reject the file: it is returned in ``Loaded.skipped``.

Text is normalised once, before anything else: CRLF and lone CR become LF, and a UTF-8
byte order mark is dropped. Chunk offsets index into this normalised text, so they do not
depend on the platform that wrote the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import RagtuneError
from ragtune.ingest.formats import (
    SNIFF_BYTES,
    SkipFile,
    binary_reason,
    clean_extracted,
    decode_text,
    decode_utf8,
    markdown_text,
    pdf_text,
)
from ragtune.ingest.html import html_text
from ragtune.types import Document

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl")
DEFAULT_MAX_BYTES = 50 * 2**20
_HASH_VERSION = "ragtune-document-v1"


@dataclass(frozen=True)
class Loaded:
    """What one file yielded: its documents, and the records skipped inside it.

    ``skipped`` holds ``(what, reason)`` pairs for the parts left out of a file that was
    loaded: a BEIR corpus's bad lines (``("data/corpus.jsonl:17", "invalid JSON: ...")``),
    or a PDF's pages whose text could not be extracted (``("a.pdf page 3", ...)``).
    """

    documents: list[Document]
    skipped: list[tuple[str, str]] = field(default_factory=list)


# --- discovery and identity --------------------------------------------------------------


def discover(
    paths: Sequence[Path], on_skip: Callable[[str, str], None] | None = None
) -> Iterator[tuple[Path, Path]]:
    """Yield ``(file, root)`` for every file to ingest under ``paths``.

    A directory is walked recursively (symlinked folders are followed, each real folder
    once, so links cannot loop) and yields its supported files sorted by relative path,
    skipping names that start with ``.``. A file named explicitly is always yielded, even
    a hidden or unsupported one, so ``load_file`` can say why it is not ingested rather
    than ignoring it silently; its root is the file itself. A file reached twice (two
    arguments, or a symlink) is yielded once, the first time. Every path is checked
    before anything is yielded: a missing one raises ``RagtuneError``. A folder that
    cannot be listed is passed to ``on_skip(folder, reason)`` (and logged without one).
    """
    for path in paths:
        if not os.path.lexists(path) or (path.is_symlink() and not path.exists()):
            raise RagtuneError(
                f"Path not found: {path}",
                "check the spelling; pass files or folders of .txt, .md, .html, .pdf, .jsonl",
            )
    seen: set[Path] = set()
    for path in paths:
        files = _walk(path, on_skip) if path.is_dir() else [path]
        for file in files:
            real = file.resolve()
            if real not in seen:
                seen.add(real)
                yield file, path


def _walk(root: Path, on_skip: Callable[[str, str], None] | None = None) -> list[Path]:
    """The supported, non-hidden files under ``root``, sorted by their relative path parts."""
    found: list[tuple[tuple[str, ...], Path]] = []
    visited = {os.path.realpath(root)}

    def on_error(err: OSError) -> None:
        reason = f"cannot list folder: {err.strerror or err}"
        if on_skip is not None:
            on_skip(str(err.filename), reason)
        else:
            log.warning("%s: %s", err.filename, reason)

    for folder, dirnames, filenames in os.walk(root, followlinks=True, onerror=on_error):
        keep = []
        for name in dirnames:
            real = os.path.realpath(os.path.join(folder, name))
            if not name.startswith(".") and real not in visited:
                visited.add(real)
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            if not name.startswith(".") and _suffix(Path(name)) in SUPPORTED_SUFFIXES:
                file = Path(folder) / name
                found.append((file.relative_to(root).parts, file))
    found.sort(key=lambda item: item[0])
    return [file for _, file in found]


def doc_id_for(file: Path, root: Path) -> str:
    """A document id that is stable across re-ingests from any working directory.

    Under a folder root it is ``<folder name>/<path inside it>`` (``docs/guide/intro.md``);
    for a file named directly it is the file name.
    """
    if root.is_dir():
        rel = file.relative_to(root).as_posix()
        prefix = root.resolve().name
        return f"{prefix}/{rel}" if prefix else rel
    return file.name


def document_hash(title: str, text: str, attributes: Mapping[str, str]) -> str:
    """sha256 (hex) of what gets indexed: title, text and attributes, canonically encoded.

    The encoding is compact JSON of ``[version, title, text, sorted attribute pairs]``, so
    equal content hashes equal regardless of attribute order; ids and paths are not part
    of it (a moved file keeps its hash).
    """
    payload = [_HASH_VERSION, title, text, sorted(attributes.items())]
    encoded = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()


# --- loading ---------------------------------------------------------------------------


def load_file(
    file: Path,
    root: Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    attributes: Mapping[str, str] | None = None,
) -> Loaded:
    """Load one file into documents, or raise ``SkipFile`` saying why it cannot be.

    txt, md, html and pdf files give one document whose id is ``doc_id_for(file, root)``;
    a BEIR ``.jsonl`` corpus gives one document per record, with the record's id. Every
    document has ``source = str(file.resolve())``, a ``content_hash``, and ``attributes``
    merged over the ones read from the file (the caller's win). ``max_bytes`` limits the
    file size, except for ``.jsonl`` corpora, where it limits each record's text instead.
    """
    documents: list[Document] = []
    skipped: list[tuple[str, str]] = []
    for item in iter_file(file, root, max_bytes, attributes):
        if isinstance(item, Document):
            documents.append(item)
        else:
            skipped.append(item)
    return Loaded(documents, skipped)


def iter_file(
    file: Path,
    root: Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    attributes: Mapping[str, str] | None = None,
) -> Iterator[Document | tuple[str, str]]:
    """What :func:`load_file` returns, one document or ``(what, reason)`` skip at a time,
    so a large BEIR corpus is never held in memory whole. ``SkipFile`` is raised while
    iterating (for a corpus, before its first record or, if it cannot be read further,
    part-way)."""
    suffix = _suffix(file)
    if suffix not in SUPPORTED_SUFFIXES:
        shown = suffix or "(no suffix)"
        raise SkipFile(
            f"unsupported file type {shown} (supported: {', '.join(SUPPORTED_SUFFIXES)})"
        )
    size = _regular_file_size(file)
    extra = dict(attributes or {})
    source = str(file.resolve())
    if suffix == ".jsonl":
        if size == 0:
            raise SkipFile("empty file")
        yield from _iter_corpus(file, source, max_bytes, extra)
        return
    data = _read_limited(file, size, max_bytes)
    if suffix == ".pdf":
        title, text, failed = pdf_text(data)
        yield from ((f"{file} page {number}", reason) for number, reason in failed)
    else:
        text = decode_text(data)
        if suffix in (".md", ".markdown"):
            title, text = markdown_text(text)
        elif suffix in (".html", ".htm"):
            try:
                title, text = html_text(text)
            except ValueError as e:
                raise SkipFile(str(e)) from None
        else:
            title = ""
        if not text.strip():
            raise SkipFile("no text left after removing markup and front matter")
    del data
    yield _document(doc_id_for(file, root), text, source, title, extra)


def _suffix(file: Path) -> str:
    return file.suffix.lower()


def _document(
    doc_id: str, text: str, source: str, title: str, attributes: dict[str, str]
) -> Document:
    return Document(
        doc_id=doc_id,
        text=text,
        source=source,
        title=title,
        attributes=attributes,
        content_hash=document_hash(title, text, attributes),
    )


def _regular_file_size(file: Path) -> int:
    try:
        st = os.stat(file)
    except OSError as e:
        raise SkipFile(f"cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SkipFile("not a regular file")
    return st.st_size


def _read_limited(file: Path, size: int, max_bytes: int) -> bytes:
    """The file's bytes; SkipFile when it is empty, unreadable or over ``max_bytes``."""
    if size == 0:
        raise SkipFile("empty file")
    if size > max_bytes:
        raise SkipFile(f"file is {over_limit(size, max_bytes)}")
    try:
        with open(file, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as e:
        raise SkipFile(f"cannot read: {e.strerror or e}") from None
    if len(data) > max_bytes:  # the file grew since stat
        raise SkipFile(f"file is over the limit of {format_size(max_bytes)}")
    if not data:
        raise SkipFile("empty file")
    return data


def over_limit(size: int, limit: int) -> str:
    """``"60.0 MiB, over the limit of 50.0 MiB"``, in bytes where rounding would hide the
    difference (``"52,429,825 bytes, over the limit of 52,428,800 bytes (50.0 MiB)"``)."""
    if format_size(size) != format_size(limit):
        return f"{format_size(size)}, over the limit of {format_size(limit)}"
    return f"{size:,} bytes, over the limit of {limit:,} bytes ({format_size(limit)})"


def format_size(n: int) -> str:
    """``512 bytes``, ``3.2 KiB``, ``50.0 MiB``, ``1.5 GiB``."""
    if n < 1024:
        return f"{n} bytes"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


# --- BEIR corpus (jsonl) ---------------------------------------------------------------


def _iter_corpus(
    file: Path, source: str, max_bytes: int, extra: dict[str, str]
) -> Iterator[Document | tuple[str, str]]:
    """A BEIR ``corpus.jsonl``, read line by line; bad records are skipped, not fatal."""
    any_record = False
    try:
        with open(file, "rb") as fh:
            reason = binary_reason(fh.read(SNIFF_BYTES))
            if reason:
                raise SkipFile(reason)
            fh.seek(0)
            for item in _corpus_records(fh, str(file), source, max_bytes, extra):
                any_record = True
                yield item
    except OSError as e:
        raise SkipFile(f"cannot read: {e.strerror or e}") from None
    if not any_record:
        raise SkipFile("empty file (only whitespace)")


def _corpus_records(
    lines: Iterable[bytes],
    name: str,
    source: str,
    max_bytes: int,
    extra: dict[str, str],
) -> Iterator[Document | tuple[str, str]]:
    """Documents and ``(what, reason)`` skips, one per non-blank line, streaming."""
    first_line_at: dict[str, int] = {}  # id -> line of the document that has it
    offset = 0  # byte offset of the current line in the file
    checked_format = False
    for lineno, raw in enumerate(lines, 1):
        line_offset, offset = offset, offset + len(raw)
        if not raw.strip():
            continue
        what = f"{name}:{lineno}"  # name is the file as discovered
        record, error = None, ""
        try:
            record = json.loads(decode_utf8(raw, line_offset))
        except SkipFile as e:
            error = e.reason
        except json.JSONDecodeError as e:
            error = f"invalid JSON: {e.msg} (column {e.colno})"
        except (ValueError, RecursionError) as e:  # e.g. a 5000-digit number, deep nesting
            error = f"invalid JSON: {type(e).__name__}: {e}"
        if not checked_format:
            _check_corpus_format(record, error, lineno)
            checked_format = True
        if error:
            yield what, error
            continue
        result = _corpus_document(record, source, max_bytes, extra)
        if isinstance(result, str):
            yield what, result
        elif result.doc_id in first_line_at:
            yield (
                what,
                f"duplicate id {result.doc_id!r} (first on line {first_line_at[result.doc_id]})",
            )
        else:
            first_line_at[result.doc_id] = lineno
            yield result


def _check_corpus_format(record: Any, error: str, lineno: int) -> None:
    """Reject a file whose first record is not a BEIR corpus record."""
    expected = 'expected one {"_id", "title", "text"} object per line'
    if error:
        raise SkipFile(f"not a BEIR corpus: line {lineno}: {error} ({expected})")
    if not isinstance(record, dict):
        raise SkipFile(f"not a BEIR corpus: line {lineno} is not a JSON object ({expected})")
    if "_id" not in record and "id" not in record:
        raise SkipFile(f"not a BEIR corpus: line {lineno} has no '_id' ({expected})")
    if "text" not in record:
        raise SkipFile(f"not a BEIR corpus: line {lineno} has no 'text' ({expected})")


def _corpus_document(
    record: Any, source: str, max_bytes: int, extra: dict[str, str]
) -> Document | str:
    """The record as a Document, or the reason it is skipped."""
    if not isinstance(record, dict):
        return "not a JSON object"
    raw_id = record.get("_id", record.get("id"))
    if raw_id is None:
        return "no '_id'"
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
        return "'_id' is not a string or integer"
    doc_id = str(raw_id)
    if not doc_id.strip():
        return "empty '_id'"
    text, title, metadata = record.get("text"), record.get("title"), record.get("metadata")
    if not isinstance(text, str):
        return "no 'text' string"
    if not text.strip():
        return f"empty text (id {doc_id!r})"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        return f"text is {over_limit(size, max_bytes)}"
    if title is not None and not isinstance(title, str):
        return "'title' is not a string"
    if metadata is not None and not isinstance(metadata, dict):
        return "'metadata' is not an object"
    attributes = {**flatten_metadata(metadata or {}), **extra}
    title_text = clean_extracted(title or "").strip()
    return _document(doc_id, clean_extracted(text), source, title_text, attributes)


def flatten_metadata(metadata: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """String attributes from a JSON object: str/int/float/bool values as strings (bools as
    ``true``/``false``), nested objects as dotted keys; lists and nulls are left out."""
    out: dict[str, str] = {}
    for key, value in metadata.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[name] = str(value)
        elif isinstance(value, dict):
            out.update(flatten_metadata(value, f"{name}."))
    return out
