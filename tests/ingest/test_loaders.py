"""Loaders: discovery, ids, hashing, each format, and every kind of bad input."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pypdf
import pytest
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from ragtune.errors import RagtuneError
from ragtune.ingest.html import html_text
from ragtune.ingest.loaders import (
    DEFAULT_MAX_BYTES,
    SUPPORTED_SUFFIXES,
    Loaded,
    SkipFile,
    discover,
    doc_id_for,
    document_hash,
    flatten_metadata,
    format_size,
    load_file,
    markdown_text,
)
from ragtune.types import Document


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_bytes(data.encode("utf-8"))
    else:
        path.write_bytes(data)
    return path


def load_one(path: Path, attributes: dict[str, str] | None = None) -> Document:
    loaded = load_file(path, path, attributes=attributes)
    assert loaded.skipped == []
    assert len(loaded.documents) == 1
    return loaded.documents[0]


def skip_reason(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    with pytest.raises(SkipFile) as info:
        load_file(path, path, max_bytes=max_bytes)
    assert "\n" not in info.value.reason
    return info.value.reason


def make_pdf(pages: list[str], title: str | None = None, password: str | None = None) -> bytes:
    """A PDF whose pages show ``pages`` in Helvetica, one text line per ``\\n``."""
    writer = PdfWriter()
    for text in pages:
        page = writer.add_blank_page(612, 792)
        font = DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
            }
        )
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        if text:
            lines = " ".join(f"({line}) '" for line in text.split("\n"))
            stream = DecodedStreamObject()
            stream.set_data(f"BT /F1 12 Tf 72 720 Td 14 TL {lines} ET".encode())
            page[NameObject("/Contents")] = writer._add_object(stream)
    if title:
        writer.add_metadata({"/Title": title})
    if password:
        writer.encrypt(user_password=password, owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


# --- discover ----------------------------------------------------------------------------


def test_discover_walks_sorted_skips_hidden_and_unsupported(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    for name in ["b.md", "a.txt", "sub/c.html", "sub/d.PDF", "a-b/e.jsonl", "img.png"]:
        write(docs / name, "x")
    write(docs / ".hidden.md", "x")
    write(docs / ".git" / "f.md", "x")
    found = list(discover([docs]))
    assert [f.relative_to(docs).as_posix() for f, _ in found] == [
        "a-b/e.jsonl",
        "a.txt",
        "b.md",
        "sub/c.html",
        "sub/d.PDF",
    ]
    assert all(root == docs for _, root in found)


def test_discover_follows_symlinks_once_without_looping(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs / "a.md", "x")
    write(tmp_path / "elsewhere" / "b.md", "x")
    (docs / "loop").symlink_to(docs)
    (docs / "link").symlink_to(tmp_path / "elsewhere")
    found = [f.relative_to(docs).as_posix() for f, _ in discover([docs])]
    assert found == ["a.md", "link/b.md"]


def test_discover_yields_named_files_even_unsupported_or_hidden(tmp_path: Path) -> None:
    notes = write(tmp_path / "notes.xyz", "x")
    hidden = write(tmp_path / ".env.md", "x")
    assert list(discover([notes, hidden])) == [(notes, notes), (hidden, hidden)]
    assert skip_reason(notes) == (
        "unsupported file type .xyz (supported: " + ", ".join(SUPPORTED_SUFFIXES) + ")"
    )


def test_discover_yields_each_file_once(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    a = write(docs / "a.md", "x")
    assert list(discover([docs, a, docs])) == [(a, docs)]


def test_discover_missing_path_raises_before_yielding(tmp_path: Path) -> None:
    a = write(tmp_path / "a.md", "x")
    with pytest.raises(RagtuneError) as info:
        list(discover([a, tmp_path / "nope"]))
    assert info.value.message == f"Path not found: {tmp_path / 'nope'}"
    assert info.value.hint


# --- ids and hashes ----------------------------------------------------------------------


def test_doc_id_is_stable_across_working_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "docs" / "guide" / "intro.md", "x")
    monkeypatch.chdir(tmp_path)
    ids = [doc_id_for(f, root) for f, root in discover([Path("docs")])]
    monkeypatch.chdir(tmp_path / "docs" / "guide")
    assert [doc_id_for(f, root) for f, root in discover([Path("..")])] == ids
    assert [doc_id_for(f, root) for f, root in discover([Path(".")])] == ["guide/intro.md"]
    assert ids == ["docs/guide/intro.md"]
    assert doc_id_for(Path("intro.md"), Path("intro.md")) == "intro.md"


def test_document_hash_is_canonical() -> None:
    h = document_hash("T", "body", {"a": "1", "b": "2"})
    assert h == document_hash("T", "body", {"b": "2", "a": "1"})
    assert h != document_hash("T", "body ", {"a": "1", "b": "2"})
    assert h != document_hash("", "Tbody", {"a": "1", "b": "2"})
    assert h != document_hash("T", "body", {"a": "1", "b": "3"})


def test_document_hash_golden_value() -> None:
    # sha256 of '["ragtune-document-v1","Title","Text",[["k","v"]]]'. Changing the encoding
    # re-embeds every knowledge base on its next ingest: do it on purpose only.
    golden = "40e8a893bdca3e70dda30d71375dc76e9cc6e95127d80cf11daf11a987fd0c38"
    assert document_hash("Title", "Text", {"k": "v"}) == golden


def test_format_size() -> None:
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 50 * 2**20, 3 * 2**30)] == [
        "0 bytes",
        "1023 bytes",
        "1.0 KiB",
        "1.5 KiB",
        "50.0 MiB",
        "3.0 GiB",
    ]


# --- text and markdown -------------------------------------------------------------------


def test_txt_normalises_newlines_and_strips_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", b"\xef\xbb\xbfline one\r\nline two\rthree\n")
    doc = load_one(path, attributes={"team": "docs"})
    assert doc == Document(
        doc_id="a.txt",
        text="line one\nline two\nthree\n",
        source=str(path.resolve()),
        title="",
        attributes={"team": "docs"},
        content_hash=document_hash("", "line one\nline two\nthree\n", {"team": "docs"}),
    )


def test_txt_under_a_folder_gets_a_folder_id(tmp_path: Path) -> None:
    path = write(tmp_path / "kb" / "sub" / "a.txt", "hello")
    loaded = load_file(path, tmp_path / "kb")
    assert loaded == Loaded([loaded.documents[0]], [])
    assert loaded.documents[0].doc_id == "kb/sub/a.txt"


def test_markdown_front_matter_and_title(tmp_path: Path) -> None:
    front = "---\ntitle: Front\ntags: [a]\n---\n"
    body = "```sh\n# not a title\n```\n## Sub\n# Real Title #\nBody\n"
    path = write(tmp_path / "a.md", front + body)
    doc = load_one(path)
    assert doc.title == "Real Title"
    assert doc.text == body


def test_markdown_title_falls_back_to_front_matter() -> None:
    assert markdown_text('---\ntitle: "Front Title"\n---\nBody\n') == ("Front Title", "Body\n")
    assert markdown_text("No front matter\n---\nx\n") == ("", "No front matter\n---\nx\n")
    assert markdown_text("---\nunclosed\n") == ("", "---\nunclosed\n")
    assert markdown_text("#NotAHeading\n#  Spaced  \n") == ("Spaced", "#NotAHeading\n#  Spaced  \n")


def test_markdown_with_only_front_matter_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "a.md", "---\ntitle: x\n---\n  \n")
    assert skip_reason(path) == "no text left after removing markup and front matter"


# --- html --------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html><head><title>The  Page</title><style>p { color: red }</style>
<script>var nav = "navigation";</script></head>
<body>
<header><a href="/">Home</a> <a href="/blog">Blog</a></header>
<nav><ul><li>Menu one</li><li>Menu two</li></ul></nav>
<div role="navigation">Breadcrumbs</div>
<div role="search"><form><input name=q><button>Search</button></form></div>
<main>
  <h1>Main  heading</h1>
  <p>First paragraph with <b>bold</b>
     and <a href="#">a   link</a> &amp; an entity&nbsp;here.</p>
  <p>Line one<br>Line two</p>
  <ul><li>apple</li><li>pear</li></ul>
  <pre>
def f():
    return 1
</pre>
  <p hidden>secret</p><span aria-hidden="true">icon</span>
  <table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table>
  <script>tracking()</script><noscript>Enable JS</noscript>
</main>
<aside>Related posts</aside>
<footer>Copyright 2024</footer>
</body></html>
"""


def test_html_keeps_main_text_only(tmp_path: Path) -> None:
    doc = load_one(write(tmp_path / "page.html", PAGE))
    assert doc.title == "The Page"
    assert doc.text == (
        "Main heading\n\n"
        "First paragraph with bold and a link & an entity here.\n\n"
        "Line one\nLine two\n\n"
        "apple\npear\n\n"
        "def f():\n    return 1\n\n"
        "k v\na 1"
    )


def test_html_articles_and_h1_title() -> None:
    page = (
        "<body><nav>Menu</nav><p>teaser</p>"
        "<article><header><h1>First</h1><p>by A</p></header><p>One.</p>"
        "<footer>tags: x</footer></article>"
        "<div>ad</div><article><h2>Second</h2><p>Two.</p></article></body>"
    )
    assert html_text(page) == (
        "First",
        "First\n\nby A\n\nOne.\n\ntags: x\n\nSecond\n\nTwo.",
    )


def test_html_without_main_keeps_body_without_boilerplate() -> None:
    page = (
        "<html><head><title>T</title><meta charset=utf-8>"
        "<body><header>Site</header><div>Hello <i>world</i>!</div><footer>(c)</footer>"
    )
    assert html_text(page) == ("T", "Hello world!")


def test_html_forms_are_dropped_unless_they_hold_the_page() -> None:
    comment_form = "<article><p>Post.</p><form><label>Your comment</label></form></article>"
    assert html_text(comment_form) == ("", "Post.")
    webforms = '<body><form id="form1"><nav>Menu</nav><div>Whole page.</div></form></body>'
    assert html_text(webforms) == ("", "Whole page.")


def test_html_with_no_text_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "a.htm", "<html><nav>menu</nav><script>x()</script></html>")
    assert skip_reason(path) == "no text left after removing markup and front matter"


# --- pdf ---------------------------------------------------------------------------------


def test_pdf_text_and_title(tmp_path: Path) -> None:
    data = make_pdf(["Hello PDF world.\nSecond line.", "Page two."], title="My PDF")
    doc = load_one(write(tmp_path / "a.pdf", data))
    assert doc.title == "My PDF"
    assert doc.text == "Hello PDF world.\nSecond line.\n\nPage two."


def test_pdf_bad_inputs(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog")
    assert skip_reason(broken).startswith("cannot parse PDF: ")
    encrypted = write(tmp_path / "locked.pdf", make_pdf(["Secret"], password="pw"))
    assert skip_reason(encrypted) == "encrypted PDF (needs a password); save a decrypted copy"
    scanned = write(tmp_path / "scan.pdf", make_pdf(["", ""]))
    assert skip_reason(scanned) == "no text layer (scanned?); OCR is not supported"


def test_pdf_page_that_fails_is_reported_and_the_rest_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extract = pypdf.PageObject.extract_text

    def fragile(page: pypdf.PageObject, *args: Any, **kwargs: Any) -> str:
        text: str = extract(page, *args, **kwargs)
        if "Bad" in text:
            raise KeyError("/Widths")
        return text

    monkeypatch.setattr(pypdf.PageObject, "extract_text", fragile)
    path = write(tmp_path / "a.pdf", make_pdf(["Good one.", "Bad page.", "Good two."]))
    loaded = load_file(path, path)
    assert [d.text for d in loaded.documents] == ["Good one.\n\nGood two."]
    assert loaded.skipped == [(f"{path} page 2", "cannot extract text: KeyError: '/Widths'")]
    only_bad = write(tmp_path / "b.pdf", make_pdf(["Bad page."]))
    assert skip_reason(only_bad) == (
        "cannot extract text from any page (page 1: cannot extract text: KeyError: '/Widths')"
    )


# --- BEIR corpus -------------------------------------------------------------------------


def test_beir_corpus_good_and_bad_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"_id": "d1", "title": "One", "text": "First.", "metadata": {"year": 2020}}),
        "",
        "{not json",
        json.dumps({"_id": "d2", "text": ""}),
        json.dumps({"title": "no id", "text": "x"}),
        json.dumps({"_id": "d1", "text": "again"}),
        json.dumps({"id": 7, "text": "Seventh\r\ntext", "metadata": {"a": {"b": True}, "l": [1]}}),
        json.dumps({"_id": "d3", "title": 5, "text": "x"}),
        json.dumps({"_id": "d4", "text": 12}),
        json.dumps({"_id": "big", "text": "y" * 200}),
        json.dumps(["a", "list"]),
        json.dumps({"_id": "d5", "text": "ok", "metadata": "lang=en"}),
    ]
    raw = ("\n".join(lines) + "\n").encode() + b'{"_id": "d6", "text": "caf\xe9"}\n'
    path = write(tmp_path / "corpus.jsonl", raw)
    loaded = load_file(path, tmp_path, max_bytes=100, attributes={"year": "override"})
    source = str(path.resolve())
    assert loaded.documents == [
        Document(
            "d1", "First.", source, "One", {"year": "override"},
            document_hash("One", "First.", {"year": "override"}),
        ),
        Document(
            "7", "Seventh\ntext", source, "", {"a.b": "true", "year": "override"},
            document_hash("", "Seventh\ntext", {"a.b": "true", "year": "override"}),
        ),
    ]  # fmt: skip
    offset = len(("\n".join(lines) + "\n").encode()) + len('{"_id": "d6", "text": "caf')
    where = str(path)
    assert loaded.skipped == [
        (
            f"{where}:3",
            "invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        ),
        (f"{where}:4", "empty text (id 'd2')"),
        (f"{where}:5", "no '_id'"),
        (f"{where}:6", "duplicate id 'd1' (first on line 1)"),
        (f"{where}:8", "'title' is not a string"),
        (f"{where}:9", "no 'text' string"),
        (f"{where}:10", "text is 200 bytes, over the limit of 100 bytes"),
        (f"{where}:11", "not a JSON object"),
        (f"{where}:12", "'metadata' is not an object"),
        (
            f"{where}:13",
            f"not UTF-8: invalid byte 0xe9 at byte offset {offset}"
            " (convert it, e.g. iconv -f latin1 -t utf-8)",
        ),
    ]


def test_beir_corpus_large_file_is_not_limited_by_max_bytes(tmp_path: Path) -> None:
    records = [json.dumps({"_id": str(i), "text": f"doc {i}"}) for i in range(50)]
    path = write(tmp_path / "corpus.jsonl", "\ufeff" + "\n".join(records))
    loaded = load_file(path, tmp_path, max_bytes=64)
    assert [d.doc_id for d in loaded.documents] == [str(i) for i in range(50)]
    assert loaded.skipped == []


def test_jsonl_that_is_not_a_corpus_is_skipped(tmp_path: Path) -> None:
    chat = write(tmp_path / "chat.jsonl", '\n{"messages": []}\n{"_id": "1", "text": "x"}\n')
    assert skip_reason(chat) == (
        "not a BEIR corpus: line 2 has no '_id'"
        ' (expected one {"_id", "title", "text"} object per line)'
    )
    no_text = write(tmp_path / "q.jsonl", '{"_id": "1", "query": "x"}\n')
    assert skip_reason(no_text).startswith("not a BEIR corpus: line 1 has no 'text'")
    garbage = write(tmp_path / "g.jsonl", "hello\n")
    assert skip_reason(garbage).startswith(
        "not a BEIR corpus: line 1: invalid JSON: Expecting value (column 1)"
    )
    blank = write(tmp_path / "blank.jsonl", "\n  \n")
    assert skip_reason(blank) == "empty file (only whitespace)"


def test_flatten_metadata() -> None:
    assert flatten_metadata({"s": "x", "i": 1, "f": 0.5, "b": False, "n": None, "d": {"e": 2}}) == {
        "s": "x",
        "i": "1",
        "f": "0.5",
        "b": "false",
        "d.e": "2",
    }


# --- bad files ---------------------------------------------------------------------------


def test_bad_files_are_skipped_with_one_line_reasons(tmp_path: Path) -> None:
    assert skip_reason(write(tmp_path / "empty.txt", b"")) == "empty file"
    assert skip_reason(write(tmp_path / "empty.jsonl", b"")) == "empty file"
    assert skip_reason(write(tmp_path / "blank.md", " \n\t\n")) == "empty file (only whitespace)"
    binary = write(tmp_path / "bin.txt", bytes(range(256)) * 4)
    assert skip_reason(binary) == "binary file (contains NUL bytes)"
    control = write(tmp_path / "ctl.txt", b"\x01\x02\x03\x04 ab" * 100)
    assert skip_reason(control) == "binary file (mostly control characters)"
    utf16 = write(tmp_path / "u16.txt", "hello".encode("utf-16"))
    assert skip_reason(utf16) == "UTF-16 text (byte order mark); convert it to UTF-8"
    latin1 = write(tmp_path / "latin1.txt", "abc\ncafé".encode("latin-1"))
    assert skip_reason(latin1) == (
        "not UTF-8: invalid byte 0xe9 at byte offset 7 (convert it, e.g. iconv -f latin1 -t utf-8)"
    )
    with_bom = write(tmp_path / "bom.txt", b"\xef\xbb\xbfab\xff")
    assert skip_reason(with_bom).startswith("not UTF-8: invalid byte 0xff at byte offset 5 ")
    big = write(tmp_path / "big.txt", "x" * 2000)
    assert skip_reason(big, max_bytes=1024) == "file is 2.0 KiB, over the limit of 1.0 KiB"
    just_over = write(tmp_path / "just.txt", "x" * (2**20 + 1024))  # 1 KiB over 1 MiB
    assert skip_reason(just_over, max_bytes=2**20) == (
        "file is 1,049,600 bytes, over the limit of 1,048,576 bytes (1.0 MiB)"
    )
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    assert skip_reason(folder) == "not a regular file"
    assert skip_reason(write(tmp_path / "README", "x")).startswith(
        "unsupported file type (no suffix) (supported: .txt, .md, "
    )
    assert skip_reason(tmp_path / "gone.txt") == "cannot read: No such file or directory"


def test_fifo_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    assert skip_reason(fifo) == "not a regular file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_file_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "secret.txt", "x")
    path.chmod(0)
    try:
        assert skip_reason(path) == "cannot read: Permission denied"
    finally:
        path.chmod(0o600)


def test_read_errors_are_skipped_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same path as a chmod 000 file, checkable as root too."""

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("ragtune.ingest.loaders.open", deny, raising=False)
    assert skip_reason(write(tmp_path / "a.txt", "x")) == "cannot read: Permission denied"
    assert skip_reason(write(tmp_path / "a.jsonl", "x")) == "cannot read: Permission denied"
