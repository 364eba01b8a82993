"""ragtune's own resource beside the OpenAI ones: ``/v1/comparisons`` (no counterpart in the
openai SDK; the shapes follow its conventions: ``object``, ``created_at``, list pages,
the error object). The settings mirror ``ragtune compare``'s flags."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ragtune.serve.protocol.fine_tuning import Error

Auto = Literal["auto"]
ArmName = Literal["base", "rag", "ft", "ft_rag"]


class Documents(BaseModel):
    """The documents: uploaded files (purpose ``assistants``), or a vector store's files."""

    model_config = ConfigDict(extra="forbid")
    file_ids: list[str] | None = Field(None, min_length=1)
    vector_store_id: str | None = None


class Questions(BaseModel):
    """A questions file as ``ragtune compare --questions`` reads it: JSONL
    ``{id, question, answers, doc_id?, split?}`` or SQuAD JSON (a ``.json`` file name)."""

    model_config = ConfigDict(extra="forbid")
    file_id: str


class TrainingData(BaseModel):
    """``file``: a chat JSONL file (purpose ``fine-tune``); ``fine_tuning_job``: the training
    file and method of one of your fine-tuning jobs; ``generated``: make-qa from the
    documents (``max_pairs`` pairs at most)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["file", "fine_tuning_job", "generated"] = "generated"
    file_id: str | None = None
    fine_tuning_job_id: str | None = None
    max_pairs: int | None = Field(None, ge=1)


class CompareHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: Auto | int | None = None
    batch_size: Auto | int | None = None
    learning_rate_multiplier: Auto | float | None = None


class ComparisonCreateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    questions: Questions
    documents: Documents | None = None
    training: TrainingData = TrainingData.model_validate({})
    arms: list[ArmName] = Field(default=["base", "rag", "ft", "ft_rag"], min_length=1)
    model: str | None = None  # the service's base model (the only one a comparison trains)
    method: Literal["lora", "full"] | None = None
    hyperparameters: CompareHyperparameters | None = None
    freshness: int = Field(0, ge=0)
    retention: int = Field(12, ge=0)
    format_check: str | None = None  # regex:PATTERN, json, or json-schema:{...}
    format_instruction: str | None = None
    max_questions: int | None = Field(None, ge=1)
    seed: int = 0
    k: int = Field(3, ge=1, le=50)
    mode: Literal["hybrid", "bm25", "dense"] = "hybrid"
    context_tokens: int = Field(1024, ge=1)
    max_new_tokens: int = Field(48, ge=1, le=4096)
    demonstrations: int = Field(2, ge=0)
    chunk_tokens: int | None = Field(None, ge=1)
    chunk_overlap: int | None = Field(None, ge=0)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    metadata: dict[str, str] | None = None


class Progress(BaseModel):
    stage: str
    fraction: float
    message: str = ""


class Comparison(BaseModel):
    id: str
    object: Literal["comparison"] = "comparison"
    created_at: int
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: Progress | None = None
    finished_at: int | None = None
    error: Error | None = None
    request: dict[str, Any]  # the inputs and settings as resolved at creation
    summary: dict[str, Any] | None = None  # results.json's verdict and arm figures, when done
    report_url: str | None = None  # relative: /v1/comparisons/{id}/report (HTML)
    results_url: str | None = None  # relative: /v1/comparisons/{id}/results (results.json)
    metadata: dict[str, str] | None = None


class QAGenerationCreateParams(BaseModel):
    """``ragtune make-qa`` on the project's documents (a ragtune extension)."""

    model_config = ConfigDict(extra="forbid")
    documents: Documents
    max_pairs: int = Field(200, ge=1, le=5000)
    paraphrases: int = Field(2, ge=0, le=5)
    seed: int = 0
    filename: str = Field("make-qa.jsonl", pattern=r"^[A-Za-z0-9._-]{1,64}\.jsonl$")


class QAGeneration(BaseModel):
    id: str
    object: Literal["qa_generation"] = "qa_generation"
    created_at: int
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: Progress | None = None
    finished_at: int | None = None
    error: Error | None = None
    request: dict[str, Any]
    training_file: str | None = None  # the generated file (purpose fine-tune), when done
    coverage: dict[str, Any] | None = None  # pairs kept, dropped by reason, documents covered
