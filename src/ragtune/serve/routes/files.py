"""/v1/files: upload (streamed, size-limited; fine-tune JSONL validated), list, retrieve,
delete, content."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ragtune.jobs.store import FileRecord
from ragtune.serve.errors import APIError, not_found
from ragtune.serve.protocol.common import list_page
from ragtune.serve.protocol.files import UPLOAD_PURPOSES, FileDeleted, FileObject
from ragtune.serve.routes.upload import discard, read_upload
from ragtune.serve.state import ProjectDep, ServiceDep

router = APIRouter(tags=["files"])
MAX_PROBLEMS = 20  # problems listed in one error message


def file_object(f: FileRecord) -> dict[str, Any]:
    return FileObject(
        id=f.id,
        bytes=f.bytes,
        created_at=f.created_at,
        filename=f.filename,
        purpose=f.purpose,  # type: ignore[arg-type]
        status=f.status,
        status_details=f.status_details,
        expires_at=f.expires_at,
    ).model_dump()


def validate_fine_tune_file(path: Path) -> None:
    """The checks of ``ragtune validate``; 400 listing the problems with line numbers."""
    from ragtune.tune.data import load_data

    data = load_data(path, keep=False)  # the checks only: memory flat whatever the size
    if data.errors:
        shown = "; ".join(
            f"line {p.line}: [{p.category}] {p.message}"
            if p.line
            else f"[{p.category}] {p.message}"
            for p in data.errors[:MAX_PROBLEMS]
        )
        more = len(data.errors) - MAX_PROBLEMS
        raise APIError(
            400,
            f"Invalid file format for fine-tuning: {len(data.errors)} problem(s): {shown}"
            + (f"; and {more} more" if more > 0 else "")
            + " (run `ragtune validate FILE` for the full report)",
            "file",
            "invalid_file_format",
        )


@router.post("/files")
async def create_file(request: Request, service: ServiceDep, project: ProjectDep) -> dict[str, Any]:
    settings = service.settings
    upload = await read_upload(request, "file", settings.max_upload_bytes, settings.home / "tmp")
    try:
        purpose = upload.fields.get("purpose", "")
        if purpose not in UPLOAD_PURPOSES:
            raise APIError(
                400,
                f"Invalid purpose {purpose!r}; use one of: {', '.join(UPLOAD_PURPOSES)}",
                "purpose",
                "invalid_value",
            )
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        suffix = Path(upload.filename or "").suffix.lower()
        key = file_id + (suffix if suffix.isascii() and suffix[1:].isalnum() else "")
        if purpose == "fine-tune":
            if suffix not in (".jsonl", ".json"):
                raise APIError(
                    400, "Fine-tuning files must be JSONL (.jsonl)", "file", "invalid_file_format"
                )
            key = f"{file_id}.jsonl"
            stage = upload.path.with_suffix(".jsonl")  # type: ignore[union-attr]
            upload.path.rename(stage)  # type: ignore[union-attr]
            upload.path = stage
            await run_in_threadpool(validate_fine_tune_file, stage)
        assert upload.path is not None
        size = await run_in_threadpool(
            service.objects.put_stream, key, _read_blocks(upload.path), settings.max_upload_bytes
        )
    finally:
        discard(upload)
    record = FileRecord(
        id=file_id,
        project=project,
        filename=Path(upload.filename or "upload").name,
        purpose=purpose,
        bytes=size,
        created_at=int(time.time()),
        key=key,
    )
    service.db.add_file(record)
    return file_object(record)


def _read_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from iter(lambda: fh.read(1 << 16), b"")


@router.get("/files")
def list_files(
    service: ServiceDep,
    project: ProjectDep,
    after: str | None = None,
    limit: int = Query(10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> dict[str, Any]:
    files, more = service.db.list_files(project, after, limit, order, purpose)
    return list_page([file_object(f) for f in files], more)


def _get(service: Any, project: str, file_id: str) -> FileRecord:
    record: FileRecord | None = service.db.get_file(project, file_id)
    if record is None:
        raise not_found("file", file_id, "file_id")
    return record


@router.get("/files/{file_id}")
def retrieve_file(file_id: str, service: ServiceDep, project: ProjectDep) -> dict[str, Any]:
    return file_object(_get(service, project, file_id))


@router.delete("/files/{file_id}")
def delete_file(file_id: str, service: ServiceDep, project: ProjectDep) -> dict[str, Any]:
    record = service.db.delete_file(project, file_id)
    if record is None:
        raise not_found("file", file_id, "file_id")
    service.objects.delete(record.key)
    return FileDeleted(id=file_id, deleted=True).model_dump()


@router.get("/files/{file_id}/content")
def file_content(file_id: str, service: ServiceDep, project: ProjectDep) -> StreamingResponse:
    record = _get(service, project, file_id)
    return StreamingResponse(
        service.objects.open(record.key), media_type="application/octet-stream"
    )
