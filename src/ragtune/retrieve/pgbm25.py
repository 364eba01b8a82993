"""BM25 in PostgreSQL over a postings table, scored exactly as :mod:`ragtune.retrieve.bm25`.

Each chunk's terms are rows of ``kb_postings (kb, term, row_id, tf, len)`` (raw term count
and the chunk's token count), whose primary key ``(kb, term, row_id) INCLUDE (tf, len)``
gives a term's postings from the index alone; ``kb_terms (kb, term, df)`` holds each term's
document frequency. Both are written and deleted in the writer's transaction with the chunks,
so readers see the chunks, postings and frequencies of one commit together (MVCC).

The score is Lucene BM25 as in the embedded backend: ``sum over the query's tokens t of
idf(t) * tf / (tf + k1 * (1 - b + b * |d| / avgdl))`` with ``idf`` from
:func:`ragtune.retrieve.bm25.idf`, top ``k`` by score, ties by row (insertion order).

Only the postings that can matter are read, by MaxScore (Turtle & Flood 1995, "Query
evaluation: strategies and optimizations", IP&M 31(6)): a term's contribution to any chunk is
below its weight ``w_t = idf(t) * qtf(t)`` (the saturation is < 1). The query terms are split
into *essential* ones (the highest weights) and the rest. Chunks holding an essential term
are scored on the essential terms; the ``k``-th best of those partial scores, theta, is a
lower bound of the final ``k``-th score. A chunk holding only non-essential terms scores
below ``W = sum of their weights``, so when ``W < theta`` it cannot enter the top ``k``; a
candidate whose partial score plus ``W`` is below theta cannot either; the survivors get the
non-essential terms' contributions by primary-key lookups. When ``W >= theta`` the split
moves one term over and the query runs again; with every term essential it is the plain,
full evaluation. The result is the exact top ``k`` either way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from psycopg import sql

# Slack for float rounding when comparing bounds with scores (scores are O(1..100)).
_REL, _ABS = 1e-9, 1e-12


def postings(
    kb: str, first_row: int, token_lists: Sequence[list[str]]
) -> Iterator[tuple[Any, ...]]:
    """``kb_postings`` rows ``(kb, term, row_id, tf, len)``; the chunks are numbered from
    ``first_row``."""
    for i, tokens in enumerate(token_lists):
        for term, tf in Counter(tokens).items():
            yield kb, term, first_row + i, tf, len(tokens)


def document_frequencies(token_lists: Sequence[list[str]]) -> Counter[str]:
    """How many of ``token_lists`` hold each term."""
    df: Counter[str] = Counter()
    for tokens in token_lists:
        df.update(set(tokens))
    return df


def first_split(weights: Sequence[float], dfs: Sequence[int], k: int) -> int:
    """How many of the terms (sorted by weight, highest first) to try as essential first: the
    fewest whose postings could give ``k`` candidates (fewer can never prove the bound)."""
    total = 0
    for i, df in enumerate(dfs, start=1):
        total += df
        if total >= k:
            return i
    return len(weights)


# A postings lookup by primary key (a B-tree descent) costs about as much as aggregating this
# many postings read in a scan of a term's index range: measured roughly (EXPLAIN ANALYZE at
# 100k chunks); it affects speed only, never results.
PROBE_COST = 6


def worth_probing(
    candidates: int, rest_weight: float, least_essential_weight: float, rest_dfs: Sequence[int]
) -> bool:
    """Whether looking up the non-essential terms for the candidates that survive the bound
    is cheaper than reading those terms' postings whole (then every term is made essential).
    The survivors are guessed as the share ``rest_weight / least_essential_weight`` of the
    ``candidates``: a candidate survives when its partial score is within ``rest_weight`` of
    theta, so the lighter the other terms, the fewer survive."""
    share = min(1.0, rest_weight / least_essential_weight) if least_essential_weight > 0 else 1.0
    return candidates * share * len(rest_dfs) * PROBE_COST <= sum(rest_dfs)


def bound_holds(rest_weight: float, theta: float) -> bool:
    """Whether chunks holding only the non-essential terms (each scoring below
    ``rest_weight``) are provably outside the top ``k`` whose ``k``-th partial score is
    ``theta`` (0 when there were fewer than ``k`` candidates)."""
    return theta > 0 and rest_weight * (1 + _REL) + _ABS < theta


def search_sql(
    kb: str,
    k: int,
    k1: float,
    b: float,
    avgdl: float,
    rest_weight: float | None,
    where: sql.Composable | None,
    columns: str,
) -> sql.Composed:
    """The top-``k`` query for one split. Parameters, in order: the essential terms (text[])
    and their weights (float8[]), the other terms and theirs, then the filter's. Each row is
    the chunk's ``columns``, its score, and theta (the ``k``-th partial score, or 0).
    ``rest_weight`` None: every term is essential (the other terms' lists are empty), so the
    query is the plain aggregation, without bound or lookups."""

    def saturation(p: str) -> sql.Composable:
        return sql.SQL("{p}.tf / ({p}.tf + {k1} * (1 - {b} + {b} * {p}.len / {avgdl}))").format(
            p=sql.Identifier(p),
            k1=sql.Literal(float(k1)),
            b=sql.Literal(float(b)),
            avgdl=sql.Literal(float(avgdl)),
        )

    filtered: sql.Composable
    if where is None:
        filtered = sql.SQL("SELECT row_id, s FROM e")
    else:
        filtered = sql.SQL(
            "SELECT e.row_id, e.s FROM e JOIN kb_chunks c ON c.kb = {kb} AND c.row_id = e.row_id "
            "WHERE {where}"
        ).format(kb=sql.Literal(kb), where=where)
    head = sql.SQL(
        "WITH ess(term, weight) AS (SELECT * FROM unnest(%s::text[], %s::float8[])),"
        " rest(term, weight) AS (SELECT * FROM unnest(%s::text[], %s::float8[])),"
        " e AS (SELECT p.row_id, sum(ess.weight * {sat_p}) AS s"
        "  FROM ess JOIN kb_postings p ON p.kb = {kb} AND p.term = ess.term GROUP BY p.row_id),"
    ).format(sat_p=saturation("p"), kb=sql.Literal(kb))
    cols = sql.SQL(", ").join(
        sql.SQL("ch.{}").format(sql.Identifier(c)) for c in columns.split(", ")
    )
    if rest_weight is None:
        return head + sql.SQL(
            " f AS ({filtered}),"
            " top AS (SELECT row_id, s AS score FROM f ORDER BY s DESC, row_id LIMIT {k})"
            " SELECT {cols}, top.score, 0::float8 FROM top"
            " JOIN kb_chunks ch ON ch.kb = {kb} AND ch.row_id = top.row_id"
            " ORDER BY top.score DESC, top.row_id"
        ).format(filtered=filtered, k=sql.Literal(k), cols=cols, kb=sql.Literal(kb))
    return head + sql.SQL(
        " f AS MATERIALIZED ({filtered}),"
        " kth AS (SELECT coalesce("
        "  (SELECT s FROM f ORDER BY s DESC OFFSET {skip} LIMIT 1), 0) AS t),"
        " top AS (SELECT f.row_id, f.s + coalesce((SELECT sum(rest.weight * {sat_q})"
        "   FROM rest JOIN kb_postings q ON q.kb = {kb} AND q.term = rest.term"
        "   AND q.row_id = f.row_id), 0) AS score"
        "  FROM f, kth WHERE f.s + {slack} >= kth.t ORDER BY score DESC, f.row_id LIMIT {k})"
        " SELECT {cols}, top.score, kth.t FROM top"
        " JOIN kb_chunks ch ON ch.kb = {kb} AND ch.row_id = top.row_id CROSS JOIN kth"
        " ORDER BY top.score DESC, top.row_id"
    ).format(
        sat_q=saturation("q"),
        kb=sql.Literal(kb),
        filtered=filtered,
        skip=sql.Literal(k - 1),
        slack=sql.Literal(rest_weight * (1 + _REL) + _ABS),
        k=sql.Literal(k),
        cols=cols,
    )
