"""What a job carries in its `params` column, typed: one model per job kind, read and written through it.

The column stays a JSON object (older rows read the same); `params_of(job)` reads it as the model of the
job's kind and `write` stores a model back. Unknown keys of an unlearn job are refused rather than
carried along, so a misspelt key fails where it is written.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from app.jobs.models import Job, JobKind


class JobParams(BaseModel):
    """What every job carries."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # How often the sweeper sent the job's task again, and when last.
    redispatches: int = 0
    redispatched_at: datetime | None = None

    @classmethod
    def of(cls, job: Job) -> Self:
        return cls.model_validate(job.params or {})

    def write(self, job: Job) -> None:
        """Store these params on the job (JSON; unset optional values are left out)."""
        job.params = self.model_dump(mode="json", exclude_none=True)


class UnlearnParams(JobParams):
    """An unlearn job: its batch, the version it unlearns from, its chain of methods."""

    # The requests' method (a name, or "auto"); one batch per method.
    requested_method: str = "auto"
    # Requests join the batch until then; the first claim comes after.
    not_before: datetime | None = None
    # The batch as frozen by the first claim.
    request_ids: list[str] | None = None
    batch_frozen_at: datetime | None = None
    # The served version the job unlearns, fixed at the first claim: the alias, the version it pointed at
    # (its number, None when the alias did not exist yet), and that version's id and number.
    alias: str | None = None
    alias_version: int | None = None
    base_version_id: str | None = None
    base_version: int | None = None
    # The methods to try in order, the current one, and how many attempts earlier chains used (a chain
    # starts again when the served version changed under the job).
    chain: list[str] = []
    chain_index: int = 0
    attempt_offset: int = 0


class TrainParams(JobParams):
    """A train job: the version it trains, the training set's dataset, the request's training params over
    the policy's defaults (app.registry.training_params.TrainingParams) and the base the API resolved."""

    model_config = ConfigDict(extra="allow")  # rows of older releases carried the request's params here

    version_id: str | None = None
    dataset_id: str | None = None
    training: dict[str, Any] = {}
    # {uri, sha256, format, from_scratch} of the folder a fine-tuning starts from
    base: dict[str, Any] | None = None
    # the model's own version that base is, when it is one (its training data is in the base's weights)
    base_version_id: str | None = None

    def requested(self) -> dict[str, Any]:
        """The request's own training params."""
        return dict(self.training or self.model_extra or {})


def params_of(job: Job) -> UnlearnParams | TrainParams:
    """The job's params as the model of its kind."""
    return TrainParams.of(job) if job.kind == JobKind.TRAIN else UnlearnParams.of(job)
