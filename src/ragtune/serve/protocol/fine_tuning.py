"""openai/types/fine_tuning/: fine_tuning_job.py, fine_tuning_job_event.py,
jobs/fine_tuning_job_checkpoint.py, job_create_params.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    batch_size: Auto | int | None = None
    learning_rate_multiplier: Auto | float | None = None
    n_epochs: Auto | int | None = None


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")  # dpo / reinforcement bodies: refused by type
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None


class RagtuneOptions(BaseModel):
    """ragtune's extension of a job: how the worker runs it."""

    model_config = ConfigDict(extra="forbid")
    # data-parallel processes (torchrun DDP: gloo on CPU, one GPU each with NCCL); None: the
    # worker's setting (RAGTUNE_TRAIN_NPROC, by default all its GPUs, else one process)
    nproc_per_node: int | None = Field(default=None, ge=1, le=64)
    # how those processes share the model: ddp (each holds all of it) or fsdp (parameters,
    # gradients and optimizer state sharded across them, for models one device cannot hold)
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # hosts the job trains on, nproc_per_node processes each: the worker that claims it is
    # node 0 and other workers join (see ragtune.jobs.nodes); None: one host
    nnodes: int | None = Field(default=None, ge=1, le=64)


class JobCreateParams(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    training_file: str
    hyperparameters: Hyperparameters | None = None  # deprecated by OpenAI, still sent
    method: Method | None = None
    seed: int | None = None
    suffix: str | None = None
    validation_file: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None
    # ragtune extension: LoRA adapters (default) or all weights.
    training_type: Literal["lora", "full"] = "lora"
    ragtune: RagtuneOptions | None = None


class Error(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    created_at: int
    error: Error | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: Hyperparameters
    model: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: Method | None = None


class FineTuningJobEvent(BaseModel):
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] | None = None


class Metrics(BaseModel):
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: Metrics
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    step_number: int
