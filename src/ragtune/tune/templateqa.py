"""Question generation by rules: answers found in a sentence, questions made by templates.

The rule-based recipe of Heilman & Smith (2010, "Good Question! Statistical Ranking for
Question Generation"): pick an answer phrase in a declarative sentence, choose the
wh-word by what the phrase is (a year, a date, a quantity, a name, a place), remove the
phrase and invert subject and auxiliary ("X was founded in 1850." -> "What year was X
founded?"); plus the in-place form of cloze-to-question translation (Lewis et al. 2019,
"Unsupervised Question Answering by Cloze Translation": the answer replaced by its
wh-phrase, "X was founded in what year?"). Every fact gets several phrasings (Ovadia et
al. 2023 found a fact is only absorbed when seen in several), and the answer is always a
span copied from the sentence, so it is supported by construction; make-qa's checks
still decide what is kept.

No parser: answers are names (runs of capitalised words), years, dates, numbers with a
counted noun, percentages, and the object of "X is a ... of Y" / "X is a Y" sentences.
Everything here is a small pure function on strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

QAMethod = Literal["model", "template", "both"]
QA_METHODS: tuple[QAMethod, ...] = ("model", "template", "both")
Kind = Literal["year", "date", "quantity", "percent", "name"]

AUX = r"is|are|was|were|has|have|had|will|can|could|may|might|would|should|must"
PREPOSITIONS = frozenset({"in", "at", "near", "from", "by", "for", "to", "with", "on", "of"})
PLACE_PREPOSITIONS = frozenset({"in", "at", "near", "from"})
# Capitalised last words that say what kind of thing a name is ("which guild").
HEAD_NOUNS = frozenset(
    [
        "guild",
        "company",
        "society",
        "university",
        "institute",
        "festival",
        "river",
        "hospital",
        "foundation",
        "works",
        "foundry",
        "cooperative",
        "organization",
        "organisation",
        "agency",
        "ministry",
        "council",
        "committee",
        "center",
        "centre",
        "association",
        "corporation",
        "museum",
        "school",
        "college",
        "province",
        "city",
        "county",
        "state",
        "republic",
        "district",
        "region",
        "lake",
        "mountain",
        "island",
        "bridge",
        "airport",
        "station",
        "party",
    ]
)
# Sentence-opening adverbials moved to the end of a fronted question ("Today X employs
# 420 people." -> "How many people does X employ today?").
LEADING_ADVERBIALS = (
    r"(?:today|now|currently|recently|nowadays|"
    r"every (?:year|summer|winter|spring|autumn|month|week|day))"
)
MAX_NAME_WORDS = 4
MAX_SENTENCE_WORDS = 40
# Not the subject of a do-support question ("Five samples tested positive" is no "X does").
NOT_SUBJECTS = frozenset(
    [
        "the",
        "a",
        "an",
        "this",
        "these",
        "those",
        "some",
        "many",
        "most",
        "all",
        "each",
        "both",
        "several",
        "our",
        "we",
        "they",
        "it",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
    ]
)
# Plural nouns that can be counted ("420 people"), not verbs ending in s ("2019 was").
COUNTED = (
    r"(?!(?:was|has|is|does|this|thus|its|as|us|his)\b)[a-z]+s|people|children|men|women|staff"
)
MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"


@dataclass(frozen=True)
class Span:
    """An answer phrase in a sentence: ``text`` is the answer (copied verbatim), ``start``
    and ``end`` bound the phrase the question replaces (the answer, with a preposition
    and a counted noun where they belong to it)."""

    text: str
    kind: Kind
    start: int
    end: int
    prep: str = ""  # the preposition before the phrase, if it is part of it
    noun: str = ""  # the counted noun ("people") or the kind of a name ("guild")


def _prev_word(sentence: str, start: int) -> str:
    m = re.search(r"(\w+)\W*$", sentence[:start])
    return m.group(1) if m else ""


def _with_prep(sentence: str, start: int) -> tuple[int, str]:
    """Extend a phrase starting at ``start`` leftwards over a preposition before it."""
    m = re.search(r"\b(\w+)\s+$", sentence[:start])
    if m and m.group(1).lower() in PREPOSITIONS:
        return m.start(1), m.group(1).lower()
    return start, ""


def find_spans(sentence: str, title: str = "") -> list[Span]:
    """Answer phrases of a sentence, left to right: years, dates, counted quantities,
    percentages and names (a capitalised sentence opener and the title are not answers)."""
    spans: list[Span] = []
    taken: list[tuple[int, int]] = []

    def add(span: Span) -> None:
        if sentence[: span.start].count("(") > sentence[: span.start].count(")"):
            return  # inside parentheses: an aside, not the clause's statement
        if all(span.end <= s or span.start >= e for s, e in taken):
            spans.append(span)
            taken.append((span.start, span.end))

    for m in re.finditer(
        rf"\b(?:\d{{1,2}}\s+)?(?:{MONTHS})(?:\s+\d{{1,2}}\b)?,?(?:\s+\d{{4}}\b)?", sentence
    ):
        start, prep = _with_prep(sentence, m.start())
        add(Span(m.group(0).rstrip(","), "date", start, m.end(), prep))
    for m in re.finditer(r"\b\d+(?:\.\d+)?\s?(?:%|per ?cent)", sentence):
        add(Span(m.group(0), "percent", m.start(), m.end()))
    year = r"(?<![\w.-])(1[5-9]\d\d|20\d\d)\b(?![\d%.,-]\d)(?!\s*%)(?!\s+(?:[a-z]+s|people)\b)"
    for m in re.finditer(year, sentence):
        if re.search(r"(?:between|and|to|\d)\s+$", sentence[: m.start()]) or re.match(
            r"\s*(?:and|to|-)\s*\d", sentence[m.end() :]
        ):
            continue  # one end of a range ("between 2011 and 2015"): no single answer
        start, prep = _with_prep(sentence, m.start())
        add(Span(m.group(1), "year", start, m.end(), prep))
    for m in re.finditer(rf"(?<![\w.-])(\d[\d,]*(?:\.\d+)?)\s+({COUNTED})\b", sentence):
        add(Span(m.group(1), "quantity", m.start(), m.end(), noun=m.group(2)))
    name = r"\b[A-Z][\w-]*[A-Za-z][\w-]*(?:\s+(?:of\s+|the\s+)?[A-Z][\w-]*)*(?!\s*\d)"
    for m in re.finditer(name, sentence):
        text = m.group(0)
        if len(text.split()) > MAX_NAME_WORDS:
            continue  # a heading or a title, not an answer
        if m.start() == 0 and " " not in text:
            continue  # a capitalised first word is usually not a name
        if title and (text.lower() in title.lower() or title.lower() in text.lower()):
            continue  # what the document is about: questions name it, answers do not
        last = text.split()[-1].lower()
        prev = _prev_word(sentence, m.start())
        article = re.search(r"\bthe\s+$", sentence[: m.start()], re.IGNORECASE)
        start = article.start() if article else m.start()
        if last in HEAD_NOUNS and " " in text:
            add(Span(text, "name", start, m.end(), noun=last))
        elif prev.islower() and prev not in PREPOSITIONS and article is None and prev:
            # "The river Brel": the noun before the name says its kind.
            noun_start = m.start() - len(prev) - 1
            art = re.search(r"\b[Tt]he\s+$", sentence[:noun_start])
            if art:
                add(Span(text, "name", art.start(), m.end(), noun=prev))
        else:
            start, prep = _with_prep(sentence, start)
            if prep or m.start() == 0:
                add(Span(text, "name", start, m.end(), prep))
    return sorted(spans, key=lambda s: s.start)


def split_clauses(sentence: str, title: str = "") -> list[str]:
    """The sentence's simple clauses, each a sentence of its own: split at ", and",
    ";", ", which" and " and is/was/has", a relative "who"/"which" given its subject,
    and an opening "It"/"Its" (or a possessive "its") resolved to the title."""
    sentence = sentence.strip().rstrip(".!") + "."
    parts = re.split(r",\s+and\s+|;\s+|,\s+which\s+\w+[^.]*", sentence)
    clauses: list[str] = []
    for part in parts:
        part = part.strip().rstrip(".").strip()
        if not part:
            continue
        m = re.match(rf"^(.*?)\s+and\s+((?:{AUX})\b.*)$", part)
        subject_m = re.match(rf"^(.+?)\s+(?:{AUX}|\w+s)\b", part)
        if m and subject_m:
            # "X works for Y and is often quoted" -> "X works for Y." + "X is often quoted."
            clauses += [m.group(1), f"{subject_m.group(1)} {m.group(2)}"]
            continue
        m = re.match(rf"^(.+?)\s+((?:{AUX})\s+an?\s+[^,]*?)\s+(?:who|which|that)\s+(.*)$", part)
        if m:  # "X is a cartographer who was born in 1950" -> two sentences
            clauses += [f"{m.group(1)} {m.group(2)}", f"{m.group(1)} {m.group(3)}"]
            continue
        clauses.append(part)
    out = []
    for c in clauses:
        if title:
            c = re.sub(r"^(It|He|She|They)\b", title, c)
            c = re.sub(r"^(Its|His|Her|Their)\b", f"{title}'s", c)
            c = re.sub(r"\bits\b", f"{title}'s", c)
        c = c[0].upper() + c[1:] if c else c
        out.append(c.rstrip(".") + ".")
    return out


def _wh(span: Span, fronted: bool, alt: bool) -> str:
    """The wh-phrase that replaces a span (``alt``: the second wording of the kind).

    The in-place forms use "what" wordings ("X employs what number of people?", "X hosts
    what festival?") and places are asked "in what place", never "where": so no question
    holds one of the demo world's question templates ("X employs how many people?",
    "Where was X born?"), whose held-out ones must stay unseen in training."""
    if span.kind == "year":
        return ("In which year" if alt else "What year") if fronted else "in what year"
    if span.kind == "date":
        return ("On what date" if alt else "When") if fronted else "when"
    if span.kind == "quantity":
        return f"how many {span.noun}" if fronted and not alt else f"what number of {span.noun}"
    if span.kind == "percent":
        return "what percentage"
    if span.noun:
        return f"which {span.noun}" if fronted and not alt else f"what {span.noun}"
    if span.prep == "by":
        return "by whom"
    if span.prep in PLACE_PREPOSITIONS:
        return "in which place" if fronted and alt else "in what place"
    if span.prep:
        return f"{span.prep} what"
    return "what"


def _finish(question: str) -> str:
    q = re.sub(r"\s+", " ", question).strip().rstrip(".,;: ")
    q = re.sub(r"\s+([,?])", r"\1", q)
    return q[0].upper() + q[1:] + "?" if q else ""


def _lemma(verb: str) -> str | None:
    """The base form of a third-person present verb ("employs" -> "employ"), or None."""
    if verb.endswith(("ss", "us", "is")) or len(verb) < 4:
        return None
    if verb.endswith("ies"):
        return verb[:-3] + "y"
    if verb.endswith(("shes", "ches", "xes", "sses", "zes")):
        return verb[:-2]
    return verb[:-1] if verb.endswith("s") else None


def _name_subject(words: str) -> bool:
    """A subject for do-support: a name of at most four capitalised words."""
    parts = words.split()
    return (
        0 < len(parts) <= MAX_NAME_WORDS
        and parts[0].lower() not in NOT_SUBJECTS
        and all(re.fullmatch(r"[A-Z][\w'-]*", p) for p in parts)
    )


def _lower_first(subject: str) -> str:
    first = subject.split()[0]
    if first in ("The", "A", "An", "This", "These", "Those", "Its", "Their"):
        return subject[0].lower() + subject[1:]
    return subject


def questions_for(clause: str, span: Span) -> list[str]:
    """Phrasings of a question about ``span`` in ``clause``: fronted forms (auxiliary
    inversion or do-support) where the clause allows, then the in-place form."""
    before, after = clause[: span.start], clause[span.end :].rstrip(".")
    in_place = _finish(f"{before}{_wh(span, False, False)}{after}")
    out: list[str] = []
    adverb = re.match(rf"^({LEADING_ADVERBIALS})\s+", clause, re.IGNORECASE)
    body_start = adverb.end() if adverb else 0
    tail = f" {adverb.group(1).lower()}" if adverb else ""
    if span.start <= body_start:  # the answer is the subject: replace it in place
        nxt = re.match(r"\s+(\w+)", clause[span.end :])
        verb_like = nxt is not None and (
            re.fullmatch(AUX, nxt.group(1)) is not None or nxt.group(1).endswith(("s", "ed"))
        )
        if span.kind != "name" or not verb_like:
            return []
        if not span.noun:
            return [in_place]
        # "What river flows ...?" and "What is the river that flows ...?"
        return [in_place, _finish(f"{before}What is the {span.noun} that{after}")]
    aux = re.match(rf"^(.+?)\s+({AUX})\s+(.*)$", clause[body_start : span.start])
    verb = re.match(r"^(.+?)\s+([a-z]+s)\s+(.*)$", clause[body_start : span.start])
    # A name after another preposition ("the signing of X") is only asked in place.
    fronted_ok = span.kind != "name" or span.prep in ("", "by", *PLACE_PREPOSITIONS)
    # Not "the aim was to study ...": an auxiliary before "to" is no statement to invert.
    simple = aux is not None and not re.search(r"[,()\d]", aux.group(1))
    simple = simple and aux is not None and not aux.group(3).startswith("to ")
    if not fronted_ok:
        pass
    elif aux and simple and len(aux.group(1).split()) <= 8:
        subject, rest = _lower_first(aux.group(1)), aux.group(3)
        for alt in (False, True):
            wh = _wh(span, True, alt)
            out.append(_finish(f"{wh} {aux.group(2)} {subject} {rest}{after}{tail}"))
    elif verb and (lemma := _lemma(verb.group(2))) and _name_subject(verb.group(1)):
        subject, rest = _lower_first(verb.group(1)), verb.group(3)
        for alt in (False, True):
            wh = _wh(span, True, alt)
            out.append(_finish(f"{wh} does {subject} {lemma} {rest}{after}{tail}"))
    out.append(in_place)
    return list(dict.fromkeys(q for q in out if q))


def copular_pairs(clause: str) -> list[tuple[str, list[str]]]:
    """``(answer, questions)`` from "X is a/an ... of Y." (what X is ... of), "X is a/an Y."
    (what X is) and "X is (the) Name." (what X is)."""
    named = re.match(
        r"^([A-Z][^,]*?)\s+(is|was)\s+(?:the\s+)?([A-Z][\w-]+(?: [A-Z][\w-]+)*)\.?$", clause
    )
    if named and len(named.group(1).split()) <= 6:  # "Zorbland's river is the Oss."
        subject, verb, name = named.groups()
        return [
            (
                name,
                [
                    _finish(f"What {verb} {_lower_first(subject)}"),
                    _finish(f"{subject} {verb} what"),
                ],
            )
        ]
    m = re.match(r"^([A-Z][^,]*?)\s+(is|was|are|were)\s+(an?)\s+([a-z][^,.]*?)\.?$", clause)
    if not m:
        return []
    subject, verb, article, predicate = m.groups()
    if " of " in predicate:
        head, obj = predicate.rsplit(" of ", 1)
        if re.search(r"\d", obj):
            return []  # a quantity: the quantity rule asks about it
        return [
            (
                obj,
                [
                    _finish(f"What {verb} {subject} {article} {head} of"),
                    _finish(f"{subject} {verb} {article} {head} of what"),
                ],
            )
        ]
    if len(predicate.split()) > 4:
        return []
    return [(predicate, [_finish(f"What {verb} {subject}"), _finish(f"{subject} {verb} what")])]


def template_questions(sentence: str, title: str = "") -> list[tuple[str, list[str]]]:
    """``(answer, phrasings)`` for every answer phrase in a sentence, first phrasing first."""
    out: list[tuple[str, list[str]]] = []
    for clause in split_clauses(sentence, title):
        out += copular_pairs(clause)
        for span in find_spans(clause, title):
            phrasings = questions_for(clause, span)
            if phrasings:
                out.append((span.text, phrasings))
    return out


def usable_sentence(sentence: str) -> bool:
    """Prose, not metadata: no links, identifiers or licence lines, and not too long."""
    low = sentence.lower()
    if any(m in low for m in ("http", "doi", "sha:", "license", "licence", "www.")):
        return False
    return 4 <= len(sentence.split()) <= MAX_SENTENCE_WORDS


def split_sentences(text: str) -> Sequence[str]:
    """The usable sentences of a passage (see :func:`usable_sentence`), without a leading
    section label ("RESULTS: ...")."""
    out = []
    for s in re.split(r"(?<=[.!?])\s+", text):
        s = re.sub(r"^[A-Z][A-Za-z ]{0,20}:\s+", "", s.strip())
        if s and usable_sentence(s):
            out.append(s)
    return out
