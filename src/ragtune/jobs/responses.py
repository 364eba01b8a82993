"""Stored responses (``/v1/responses``), per project, in the service's SQLite database.

Each row keeps the response object as returned and the conversation it closes (earlier
turns, this input, this answer), which ``previous_response_id`` continues.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ragtune.jobs.vector_stores import open_tables

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL, project TEXT NOT NULL, created_at INTEGER NOT NULL,
    body TEXT NOT NULL, conversation TEXT NOT NULL
);
"""


class ResponseDB:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._connect = open_tables(self.path, _SCHEMA)

    def add(self, project: str, body: dict[str, Any], conversation: list[dict[str, str]]) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO responses (id, project, created_at, body, conversation) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    body["id"],
                    project,
                    int(body["created_at"]),
                    json.dumps(body),
                    json.dumps(conversation),
                ),
            )

    def get(
        self, project: str, response_id: str
    ) -> tuple[dict[str, Any], list[dict[str, str]]] | None:
        """The stored response and its conversation (None: unknown or another project's)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT body, conversation FROM responses WHERE project = ? AND id = ?",
                (project, response_id),
            ).fetchone()
        return (json.loads(row[0]), json.loads(row[1])) if row else None

    def delete(self, project: str, response_id: str) -> bool:
        with self._connect() as db:
            cur = db.execute(
                "DELETE FROM responses WHERE project = ? AND id = ?", (project, response_id)
            )
        return cur.rowcount == 1
