"""API keys and the projects they belong to, stored as sha256 hashes only.

Keys come from ``RAGTUNE_API_KEYS=key1,key2`` (each key its own project) and from a keys
file, ``$RAGTUNE_HOME/serve/keys.json`` (``ragtune keys create --project NAME`` adds one), or,
with ``RAGTUNE_DATABASE_URL`` set, from the database's ``api_keys`` table (a :class:`KeyTable`,
read on every request, so a key created on one host is honoured by every server).
Keys are long random strings, so an unsalted sha256 is enough to keep them out of the file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ragtune.errors import RagtuneError
from ragtune.io import write_json_atomic

KEYS_VERSION = 1


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def env_project(key: str) -> str:
    """The project of a key given in RAGTUNE_API_KEYS: named after its hash."""
    return f"proj_{key_hash(key)[:12]}"


class KeyTable(Protocol):
    """Keys' hashes in a database every server reads (the PostgreSQL backend)."""

    def add_key(self, sha256: str, project: str) -> None: ...
    def key_project(self, sha256: str) -> str | None: ...
    def has_keys(self) -> bool: ...


@dataclass(frozen=True)
class KeyRing:
    hashes: dict[str, str]  # sha256 of the key -> project
    table: KeyTable | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.hashes) or (self.table is not None and self.table.has_keys())

    def project(self, key: str) -> str | None:
        h = key_hash(key)
        for known, project in self.hashes.items():
            if hmac.compare_digest(known, h):
                return project
        # the table is looked up by the hash, not the key, so no timing leaks the key
        return self.table.key_project(h) if self.table is not None else None


def read_keys_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RagtuneError(
            f"{path} is not valid JSON: {e}", "fix or delete the keys file"
        ) from None
    if data.get("format_version") != KEYS_VERSION:
        raise RagtuneError(
            f"{path} has format version {data.get('format_version')}; expected {KEYS_VERSION}"
        )
    return {k["sha256"]: k["project"] for k in data.get("keys", [])}


def load_keys(env_value: str | None, keys_file: Path, table: KeyTable | None = None) -> KeyRing:
    hashes = read_keys_file(keys_file)
    for key in (env_value or "").split(","):
        if key.strip():
            hashes[key_hash(key.strip())] = env_project(key.strip())
    return KeyRing(hashes, table)


def create_key(keys_file: Path, project: str, table: KeyTable | None = None) -> str:
    """Make a new key for ``project``, store its hash (in ``table`` when given, else in
    the keys file), and return the key (shown once)."""
    key = "sk-rt-" + secrets.token_urlsafe(32)
    if table is not None:
        table.add_key(key_hash(key), project)
        return key
    hashes = read_keys_file(keys_file)
    hashes[key_hash(key)] = project
    write_json_atomic(
        keys_file,
        {
            "format_version": KEYS_VERSION,
            "keys": [{"sha256": h, "project": p} for h, p in sorted(hashes.items())],
        },
    )
    return key
