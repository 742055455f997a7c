"""Shapes of the deletion-request endpoints (API.md, Deletion requests)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.registry.methods import REQUESTABLE, choice_enum
from app.requests.models import Regime, RequestStatus

MAX_SAMPLE_IDS = 10_000
MAX_MODELS = 100
MAX_SUBJECT_ID_LENGTH = 512


# The methods a request may name: app/registry/methods.py's list, which the workers' registry serves.
UnlearningMethod = choice_enum(
    "UnlearningMethod",
    REQUESTABLE,
    "Accepted method names (METHODS.md); `auto` lets the model's policy and its version decide.",
)


class DeletionRequestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SUBJECT_ID_LENGTH,
        description="The data subject, in clear; stored only as a keyed HMAC of its normalised form.",
    )
    sample_ids: list[int] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SAMPLE_IDS,
        description="Sample ids (as answered by sample registration and subject lookup) to forget.",
    )
    models: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MODELS,
        description="Restrict the request to these model names; default every model trained on the data.",
    )
    method: UnlearningMethod = UnlearningMethod.AUTO
    regime: Regime = Regime.GDPR
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Status changes are POSTed here, signed with the callback_secret of the 202 answer.",
    )

    @model_validator(mode="after")
    def _one_target(self) -> DeletionRequestCreate:
        if (self.subject_id is None) == (self.sample_ids is None):
            raise ValueError("give exactly one of subject_id and sample_ids")
        if self.sample_ids is not None and any(sample_id <= 0 for sample_id in self.sample_ids):
            raise ValueError("sample ids are positive integers")
        if self.subject_id is not None and not self.subject_id.strip():
            raise ValueError("subject_id is blank")
        return self


class DeadlineExtension(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=3, max_length=2000, description="Why more time is necessary (recorded).")
    days: int | None = Field(
        default=None,
        ge=1,
        le=366,
        description="Days to add; default: as far as the regime allows (GDPR two more months, CCPA 45 days).",
    )


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000)


class TimelineEntry(BaseModel):
    from_status: RequestStatus | None
    to_status: RequestStatus
    at: datetime
    detail: dict[str, Any] = Field(default_factory=dict)


class ModelProgress(BaseModel):
    model: str
    status: str
    job_id: str | None = None
    stage: str | None = None
    progress: int | None = None
    method: str | None = None
    verdict: str | None = None
    from_version: int | None = None
    to_version: int | None = Field(default=None, description="The promoted version without the data.")


class Extension(BaseModel):
    reason: str
    extended_at: datetime


class DeletionRequestSummary(BaseModel):
    id: str
    status: RequestStatus
    regime: Regime
    method: str
    received_at: datetime
    due_at: datetime
    days_left: int = Field(description="Calendar days (UTC) until due_at; negative once late.")
    overdue: bool = Field(description="Still open (or failed: its deadline keeps running) after due_at.")
    completed_at: datetime | None = None
    updated_at: datetime


class DeletionRequestOut(DeletionRequestSummary):
    sample_count: int
    models: list[ModelProgress]
    job_ids: list[str]
    verdict: str | None = Field(
        default=None, description="pass when every affected model's candidate passed verification."
    )
    promoted_versions: dict[str, int] = Field(default_factory=dict)
    callback_url: str | None = None
    extension: Extension | None = None
    failure_reason: str | None = None
    certificate_url: str | None = None
    timeline: list[TimelineEntry]


class DeletionRequestCreated(DeletionRequestOut):
    callback_secret: str | None = Field(
        default=None,
        description="Verifies the signatures of callback deliveries; answered only here, keep it.",
    )


class DeletionRequestPage(BaseModel):
    items: list[DeletionRequestSummary]
    next_cursor: str | None
