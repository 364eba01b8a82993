"""Bytes to text for the loaders: the reason a file is skipped, decoding and newline
normalisation, Markdown's title and body, a PDF's text layer. Pure functions of the bytes
(no file system), so each is tested on its own."""

from __future__ import annotations

import io
import re

_BOM = b"\xef\xbb\xbf"
SNIFF_BYTES = 8192  # how much of a file decides whether it is text


class SkipFile(Exception):
    """A file (or corpus) that cannot be ingested; ``reason`` says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- bytes to text ---------------------------------------------------------------------


_CONTROL_BYTES = bytes([*range(0x01, 0x09), *range(0x0E, 0x20), 0x7F])  # not \t \n \v \f \r


def binary_reason(sample: bytes) -> str | None:
    """Why ``sample`` (a file's first bytes) is not text, or None if it looks like text."""
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text (byte order mark); convert it to UTF-8"
    if b"\x00" in sample:
        return "binary file (contains NUL bytes)"
    control = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    if sample and control / len(sample) > 0.3:
        return "binary file (mostly control characters)"
    return None


def decode_text(data: bytes) -> str:
    """UTF-8 text with its BOM dropped and newlines normalised; SkipFile otherwise."""
    reason = binary_reason(data[:SNIFF_BYTES])
    if reason:
        raise SkipFile(reason)
    text = decode_utf8(data)
    if not text.strip():
        raise SkipFile("empty file (only whitespace)")
    return text


def decode_utf8(data: bytes, base_offset: int = 0) -> str:
    """Decode UTF-8 (BOM dropped, newlines normalised to LF) or raise SkipFile with the
    file offset (``base_offset`` + position) of the first invalid byte."""
    bom = len(_BOM) if data.startswith(_BOM) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = bom + e.start
        raise SkipFile(
            f"not UTF-8: invalid byte 0x{data[offset]:02x} at byte offset {base_offset + offset}"
            " (convert it, e.g. iconv -f latin1 -t utf-8)"
        ) from None
    return normalize_newlines(text)


def normalize_newlines(text: str) -> str:
    """CRLF and lone CR become LF, so offsets do not depend on the writer's platform."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_extracted(text: str) -> str:
    """Text from a library (pypdf, json): NULs dropped, lone surrogates replaced by U+FFFD."""
    text = normalize_newlines(text.replace("\x00", ""))
    return _SURROGATE.sub("\ufffd", text)


# --- markdown --------------------------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)^(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S | re.M)
_FRONT_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$", re.M)
_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def markdown_text(text: str) -> tuple[str, str]:
    """``(title, text)``: the text without its YAML front matter, as-is otherwise.

    The title is the first level-1 ATX heading (``# Title``) outside code fences, else a
    ``title:`` line in the front matter, else "".
    """
    front = ""
    match = _FRONT_MATTER.match(text)
    if match:
        front, text = match.group(1), text[match.end() :]
    title = _first_h1(text)
    if not title and (m := _FRONT_TITLE.search(front)):
        title = m.group(1).strip("\"'")
    return title, text


def _first_h1(text: str) -> str:
    fence = ""
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if m:
            marker = m.group(1)
            if not fence:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = ""
            continue
        if not fence and (h := _ATX_H1.match(line)):
            return h.group(1).strip()
    return ""


# --- pdf -------------------------------------------------------------------------------


def pdf_text(data: bytes) -> tuple[str, str, list[tuple[int, str]]]:
    """``(title, text, failed pages)`` of a PDF: the pages' text joined by blank lines, and
    ``(page number, reason)`` for pages whose text could not be extracted. SkipFile when
    it has no text (a scan), is encrypted with a password, or cannot be parsed."""
    import pypdf
    from pypdf.errors import FileNotDecryptedError

    pages: list[str] = []
    failed: list[tuple[int, str]] = []
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise SkipFile("encrypted PDF (needs a password); save a decrypted copy")
        for number, page in enumerate(reader.pages, 1):
            try:
                pages.append(clean_extracted(page.extract_text() or "").strip())
            except Exception as e:  # one damaged page should not lose the others
                failed.append((number, f"cannot extract text: {type(e).__name__}: {e}"))
        meta = reader.metadata
        title = clean_extracted(str(meta.title)).strip() if meta and meta.title else ""
    except SkipFile:
        raise
    except FileNotDecryptedError:
        raise SkipFile("encrypted PDF (needs a password); save a decrypted copy") from None
    except Exception as e:  # pypdf raises many types for damaged files
        raise SkipFile(f"cannot parse PDF: {type(e).__name__}: {e}") from None
    text = "\n\n".join(page for page in pages if page)
    if not text and failed:
        raise SkipFile(f"cannot extract text from any page (page {failed[0][0]}: {failed[0][1]})")
    if not text:
        raise SkipFile("no text layer (scanned?); OCR is not supported")
    return title, text, failed
