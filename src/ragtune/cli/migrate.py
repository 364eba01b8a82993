"""``ragtune migrate --to postgresql://…``: move an embedded installation to PostgreSQL."""

from __future__ import annotations

import argparse
import json

from ragtune.errors import RagtuneError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "migrate",
        help="copy the embedded installation (jobs, files, knowledge bases) to PostgreSQL",
        description="Copy RAGTUNE_HOME's SQLite job/file tables and every knowledge base into "
        "PostgreSQL, then print counts and content checksums of both sides (JSON). Exits 1 "
        "when any differ. Afterwards set RAGTUNE_DATABASE_URL to the same URL.",
    )
    p.add_argument("--to", required=True, metavar="postgresql://...", dest="to")
    p.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from ragtune.jobs.postgres import open_postgres
    from ragtune.jobs.settings import ServiceSettings
    from ragtune.jobs.transfer import migrate_knowledge_bases, migrate_service

    open_postgres(args.to)  # a clear error for a bad URL or an unreachable server
    reports = migrate_service(ServiceSettings.from_env(), args.to)
    reports += migrate_knowledge_bases(args.to)
    rows = [
        {
            "table": r.name,
            "source_count": r.source_count,
            "target_count": r.target_count,
            "source_sha256": r.source_sha256,
            "target_sha256": r.target_sha256,
            "match": r.ok,
        }
        for r in reports
    ]
    print(
        json.dumps({"to": "postgresql", "tables": rows, "ok": all(r.ok for r in reports)}, indent=2)
    )
    if not all(r.ok for r in reports):
        raise RagtuneError("Some tables differ after the copy", "see the JSON above")
    return 0
