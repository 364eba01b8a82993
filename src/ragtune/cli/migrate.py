"""``ragtune migrate --to postgresql://…``: move an embedded installation to PostgreSQL."""

from __future__ import annotations

import argparse
import json
import os

from ragtune.errors import RagtuneError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "migrate",
        help="copy the embedded installation (jobs, files, vector stores, keys, knowledge "
        "bases, objects) to PostgreSQL and an artefact store",
        description="Copy RAGTUNE_HOME's SQLite tables (files, jobs, events, vector stores), "
        "the API keys file and every knowledge base into PostgreSQL, and with --artifacts "
        "every stored object and run folder, then print counts and content checksums of both "
        "sides (JSON). "
        "Exits 1 when any differ. Afterwards set RAGTUNE_DATABASE_URL (and RAGTUNE_ARTIFACTS) "
        "to the same URLs.",
    )
    p.add_argument("--to", required=True, metavar="postgresql://...", dest="to")
    p.add_argument(
        "--artifacts",
        metavar="URL",
        default=os.environ.get("RAGTUNE_ARTIFACTS"),
        help="also copy every stored object (uploads, result files) and every fine-tuning "
        "run folder (checkpoints, adapters, merged models) to this artefact store, "
        "file:///... or s3://... (default: $RAGTUNE_ARTIFACTS; they stay put when unset)",
    )
    p.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from ragtune.jobs.postgres import open_postgres
    from ragtune.jobs.settings import ServiceSettings
    from ragtune.jobs.transfer import (
        migrate_knowledge_bases,
        migrate_objects,
        migrate_runs,
        migrate_service,
    )

    open_postgres(args.to)  # a clear error for a bad URL or an unreachable server
    settings = ServiceSettings.from_env()
    reports = migrate_service(settings, args.to)
    reports += migrate_knowledge_bases(args.to)
    if args.artifacts:
        reports += migrate_objects(settings, args.artifacts)
        reports += migrate_runs(settings, args.artifacts)
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
