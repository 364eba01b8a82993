"""openai/types/model.py, model_deleted.py."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Model(BaseModel):
    id: str
    created: int
    object: Literal["model"] = "model"
    owned_by: str


class ModelDeleted(BaseModel):
    id: str
    deleted: bool
    object: str = "model"
