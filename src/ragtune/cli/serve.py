"""Service commands: serve (the OpenAI-compatible API), worker (runs jobs), keys."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys
import threading
from types import FrameType

from ragtune.errors import RagtuneError

WORKER_STOP_S = 120  # how long a stopping worker may take to finish its step and checkpoint


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the OpenAI API (files, fine-tuning jobs, chat, embeddings) locally",
        description="Serve OpenAI's API on HOST:PORT so the official openai SDK fine-tunes and "
        "chats against it. Keys: RAGTUNE_API_KEYS=key1,key2 or `ragtune keys create`; without "
        "keys only loopback hosts are allowed. Starts --workers training workers.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes to start (0: run `ragtune worker`)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "worker",
        help="run queued fine-tuning jobs (alongside ragtune serve)",
        description="Claim jobs from the service's job table and run them until stopped. "
        "SIGTERM/Ctrl-C finish the current training step, save a checkpoint and requeue the job.",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("keys", help="manage API keys of ragtune serve")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    k = keys_sub.add_parser("create", help="create an API key for a project (printed once)")
    k.add_argument("--project", required=True)
    k.set_defaults(func=cmd_keys_create)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ragtune.jobs.backend import open_key_table
    from ragtune.jobs.keys import load_keys
    from ragtune.jobs.settings import ServiceSettings
    from ragtune.serve.app import create_app

    if args.workers < 0:
        raise RagtuneError("--workers must be 0 or more")
    settings = ServiceSettings.from_env()
    keys = load_keys(os.environ.get("RAGTUNE_API_KEYS"), settings.keys_file, open_key_table())
    if not keys.enabled and not is_loopback(args.host):
        raise RagtuneError(
            f"Refusing to listen on {args.host} without API keys",
            "set RAGTUNE_API_KEYS=key1,key2 or run `ragtune keys create --project NAME`, "
            "or listen on 127.0.0.1",
        )
    workers = [
        subprocess.Popen([sys.executable, "-m", "ragtune.cli", "worker"])
        for _ in range(args.workers)
    ]

    def stop_workers() -> None:
        """SIGTERM: each finishes its training step, saves a checkpoint, requeues its job."""
        for w in workers:
            if w.poll() is None:
                w.terminate()
        for w in workers:
            try:
                w.wait(timeout=WORKER_STOP_S)
            except subprocess.TimeoutExpired:
                w.kill()  # its job's lease runs out and another worker resumes it

    app = create_app(settings, keys=keys, on_shutdown=stop_workers)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:  # when uvicorn returns normally (e.g. it could not bind the port)
        stop_workers()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from ragtune.jobs.backend import open_backend
    from ragtune.jobs.settings import ServiceSettings
    from ragtune.jobs.worker import Worker

    settings = ServiceSettings.from_env()
    db, objects = open_backend(settings)
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    Worker(settings, db, objects).run(stop.is_set)
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from ragtune.jobs.backend import open_key_table
    from ragtune.jobs.keys import create_key
    from ragtune.jobs.settings import ServiceSettings

    key = create_key(ServiceSettings.from_env().keys_file, args.project, open_key_table())
    print(key)
    return 0
