"""Shapes shared by every resource: the error object and list pages."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class ErrorObject(BaseModel):  # openai/types/shared/error_object.py
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorObject


class ListPage(BaseModel, Generic[T]):
    """``{object: "list", data, has_more}`` (the SDK's ``SyncCursorPage``/``SyncPage``)."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def list_page(items: list[Any], has_more: bool = False) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "has_more": has_more,
        "first_id": items[0]["id"] if items and "id" in items[0] else None,
        "last_id": items[-1]["id"] if items and "id" in items[-1] else None,
    }
