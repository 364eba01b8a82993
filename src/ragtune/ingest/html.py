"""Main text of an HTML page, without navigation, with the stdlib ``html.parser``.

Scripts, styles, navigation, banners, footers, forms and hidden elements are dropped; when
the page has a ``<main>`` or ``<article>``, only that is kept. Block elements become
paragraph breaks, so the chunker can break at them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import NamedTuple


def _tags(names: str) -> frozenset[str]:
    return frozenset(names.split())


_DROP_TAGS = _tags(
    "script style noscript template svg head nav aside button iframe select datalist "
    "canvas object video audio dialog"
)
_SCOPED_DROP = _tags("header footer")  # page banner/contentinfo only outside sections
_SECTIONING = _tags("article main section")
_DROP_ROLES = _tags("navigation banner contentinfo search")
_HEAD_TAGS = _tags("title meta link style script base noscript template")
_VOID_TAGS = _tags("area base br col embed hr img input link meta param source track wbr")
_LINE_TAGS = _tags("br li tr dt dd option caption")
_BLOCK_TAGS = _tags(
    "address article aside blockquote body center details dialog dir div dl fieldset "
    "figcaption figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr html legend main menu "
    "nav ol p pre section summary table tbody tfoot thead ul"
)
_CELL_TAGS = frozenset({"td", "th"})
_WS = re.compile(r"\s+")
_TEXT, _PRE, _BREAK = 0, 1, 2


class _Piece(NamedTuple):
    kind: int  # _TEXT (collapse whitespace), _PRE (verbatim) or _BREAK (value = newlines)
    value: str
    main: int  # index of the enclosing <main>, -1 outside any
    article: bool  # inside an <article>
    h1: int  # index of the enclosing <h1>, -1 outside any
    form: bool  # inside a <form>: dropped unless that leaves no text (see _main_pieces)


@dataclass
class _Frame:
    tag: str
    drop: bool
    main: int = -1
    article: bool = False
    h1: int = -1
    pre: bool = False
    form: bool = False


class _MainTextParser(HTMLParser):
    """Collects text pieces tagged with their main/article/h1 scope; drops boilerplate."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[_Frame] = [_Frame("#root", drop=False)]
        self.pieces: list[_Piece] = []
        self.title_parts: list[str] | None = None  # while inside the document <title>
        self.title = ""
        self.n_main = 0
        self.n_h1 = 0

    def _emit(self, kind: int, value: str) -> None:
        top = self.stack[-1]
        if not top.drop:
            self.pieces.append(_Piece(kind, value, top.main, top.article, top.h1, top.form))

    def _break_for(self, tag: str) -> None:
        if tag in _LINE_TAGS:
            self._emit(_BREAK, "\n")
        elif tag in _BLOCK_TAGS:
            self._emit(_BREAK, "\n\n")
        elif tag in _CELL_TAGS:
            self._emit(_TEXT, " ")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if (self.stack[-1].tag == "head" and tag not in _HEAD_TAGS) or tag == "body":
            self._close("head")  # </head> is optional in HTML
        open_tags = [f.tag for f in self.stack]
        if tag == "title" and not self.title and "svg" not in open_tags:
            self.title_parts = []
        self._break_for(tag)
        if tag in _VOID_TAGS:
            return
        top = self.stack[-1]
        frame = _Frame(tag, top.drop, top.main, top.article, top.h1, top.pre, top.form)
        frame.drop = frame.drop or self._drops(tag, dict(attrs), open_tags)
        if not frame.drop:
            if tag == "main" and frame.main < 0:
                frame.main, self.n_main = self.n_main, self.n_main + 1
            elif tag == "article":
                frame.article = True
            elif tag == "h1" and frame.h1 < 0:
                frame.h1, self.n_h1 = self.n_h1, self.n_h1 + 1
            elif tag == "pre":
                frame.pre = True
            elif tag == "form":
                frame.form = True
        self.stack.append(frame)

    @staticmethod
    def _drops(tag: str, attrs: dict[str, str | None], open_tags: list[str]) -> bool:
        if tag in _DROP_TAGS or "hidden" in attrs:
            return True
        if tag in _SCOPED_DROP and not _SECTIONING.intersection(open_tags):
            return True
        if (attrs.get("aria-hidden") or "").strip().lower() == "true":
            return True
        roles = (attrs.get("role") or "").lower().split()
        return any(role in _DROP_ROLES for role in roles)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self.title_parts is not None:
            self.title = _WS.sub(" ", "".join(self.title_parts)).strip()
            self.title_parts = None
        if self._close(tag):
            self._break_for(tag)

    def _close(self, tag: str) -> bool:
        """Pop up to and including the innermost open ``tag``; False when none is open."""
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return True
        return False

    def handle_data(self, data: str) -> None:
        if self.title_parts is not None:
            self.title_parts.append(data)
        self._emit(_PRE if self.stack[-1].pre else _TEXT, data)


def html_text(markup: str) -> tuple[str, str]:
    """``(title, main text)`` of an HTML page, without navigation and other boilerplate.

    Dropped: script/style/head/nav/aside/button/iframe-like elements, page-level header
    and footer, elements with role navigation/banner/contentinfo/search, ``aria-hidden=
    "true"`` or ``hidden``, and form content unless nothing else is left. If the page has
    a ``<main>``, only the first one is kept; else, if it has ``<article>`` elements, only
    those. Block elements break paragraphs (``\\n\\n``), line
    elements (br, li, tr) break lines, whitespace inside other text collapses to one space,
    and ``<pre>`` is kept verbatim. The title is ``<title>``, else the first kept ``<h1>``.
    """
    parser = _MainTextParser()
    try:
        parser.feed(markup)
        parser.close()
    except Exception as e:  # html.parser is lenient; this guards odd inputs
        raise ValueError(f"cannot parse HTML: {e}") from None
    pieces = _main_pieces(parser.pieces)
    return parser.title or _first_h1_text(pieces), _assemble(pieces)


def _main_pieces(pieces: list[_Piece]) -> list[_Piece]:
    """The first ``<main>``'s pieces, else all ``<article>`` pieces, else all pieces: the
    first of these with any text, preferring each without its ``<form>`` content (some
    frameworks wrap a whole page in one form, so forms are not dropped outright)."""
    for scope in (
        [p for p in pieces if p.main == 0],
        [p for p in pieces if p.article],
        pieces,
    ):
        for keep in ([p for p in scope if not p.form], scope):
            if any(p.kind != _BREAK and p.value.strip() for p in keep):
                return keep
    return pieces


def _first_h1_text(pieces: list[_Piece]) -> str:
    """The text of the first ``<h1>`` among ``pieces``, whitespace collapsed."""
    first = min((p.h1 for p in pieces if p.h1 >= 0), default=-1)
    if first < 0:
        return ""
    text = "".join(p.value for p in pieces if p.h1 == first and p.kind != _BREAK)
    return _WS.sub(" ", text).strip()


def _assemble(pieces: list[_Piece]) -> str:
    """Join pieces: collapse inline whitespace, turn breaks into ``\\n`` or ``\\n\\n``."""
    out: list[str] = []
    newlines = 0  # owed before the next text
    space = False  # a space is owed before the next text
    for piece in pieces:
        if piece.kind == _BREAK:
            newlines = max(newlines, len(piece.value))
            space = False
            continue
        value = piece.value
        if piece.kind == _TEXT:
            value = _WS.sub(" ", value)
            core = value.strip(" ")
            if not core:
                space = space or bool(value)
                continue
            lead, trail = value[0] == " ", value[-1] == " "
            value = core
        else:  # <pre>: verbatim, except the newline that may follow <pre>
            lead = trail = False
            if newlines and value.startswith("\n"):
                value = value[1:]
        if out and newlines:
            out[-1] = out[-1].rstrip()
            out.append("\n" * newlines)
        elif out and (space or lead):
            out.append(" ")
        out.append(value)
        newlines, space = 0, trail
    return "".join(out).strip()
