"""A multipart upload parsed as it streams in: the file part goes to a temporary file, and
the upload stops with 413 the moment it passes the size limit (it is never held whole in
memory). Form fields other than the file are small and kept as text."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from ragtune.serve.errors import APIError

MAX_FIELD = 4096


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0


class _TooLarge(Exception):
    pass


async def read_upload(request: Request, file_field: str, limit: int, tmp_dir: Path) -> Upload:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise APIError(400, "Expected a multipart/form-data body with a 'file' part", "file")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 1_048_576:
        raise APIError(
            413, f"The file is larger than the limit of {limit} bytes", "file", "file_too_large"
        )
    tmp_dir.mkdir(parents=True, exist_ok=True)
    upload = Upload()
    part: dict[str, Any] = {}
    header = {"field": b"", "value": b""}
    handles: list[Any] = []

    def on_part_begin() -> None:
        part.clear()
        part["headers"] = {}
        part["data"] = bytearray()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"][header["field"].decode("latin-1").lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_headers_finished() -> None:
        _, opts = parse_options_header(part["headers"].get("content-disposition", b""))
        part["name"] = opts.get(b"name", b"").decode("utf-8", "replace")
        if part["name"] == file_field:
            upload.filename = opts.get(b"filename", b"upload").decode("utf-8", "replace")
            fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=tmp_dir)
            upload.path = Path(name)
            handles.append(os.fdopen(fd, "wb"))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part.get("name") == file_field and handles:
            upload.size += end - start
            if upload.size > limit:
                raise _TooLarge
            handles[-1].write(data[start:end])
        elif len(part["data"]) < MAX_FIELD:
            part["data"] += data[start:end]

    def on_part_end() -> None:
        if part.get("name") == file_field and handles:
            handles[-1].close()
        elif part.get("name"):
            upload.fields[part["name"]] = part["data"].decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except _TooLarge:
        discard(upload)
        raise APIError(
            413, f"The file is larger than the limit of {limit} bytes", "file", "file_too_large"
        ) from None
    except Exception as e:
        discard(upload)
        raise APIError(400, f"Could not read the multipart body: {e}", "file") from None
    finally:
        for h in handles:
            h.close()
    if upload.path is None:
        raise APIError(400, "The request has no 'file' part", "file")
    return upload


def discard(upload: Upload) -> None:
    if upload.path is not None:
        upload.path.unlink(missing_ok=True)
