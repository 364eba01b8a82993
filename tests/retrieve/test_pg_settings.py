"""RAGTUNE_PG_EF_SEARCH: pgvector's HNSW breadth for PostgreSQL knowledge bases."""

from __future__ import annotations

import pytest

from ragtune.errors import RagtuneError
from ragtune.retrieve.kb import pg_ef_search


def test_default_and_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGTUNE_PG_EF_SEARCH", raising=False)
    assert pg_ef_search() == 40
    monkeypatch.setenv("RAGTUNE_PG_EF_SEARCH", "1000")
    assert pg_ef_search() == 1000


@pytest.mark.parametrize("bad", ["0", "1001", "abc", "-5", "2.5"])
def test_out_of_range_is_one_line(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("RAGTUNE_PG_EF_SEARCH", bad)
    with pytest.raises(RagtuneError, match="RAGTUNE_PG_EF_SEARCH") as e:
        pg_ef_search()
    assert "\n" not in e.value.message
