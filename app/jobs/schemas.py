"""Shapes of the job endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.jobs.models import JobKind, JobStatus


class MethodAttempt(BaseModel):
    """One method tried by the job (the escalation chain) and the gate's verdict on it."""

    method: str
    attempt: int
    started_at: datetime
    finished_at: datetime | None
    seconds: float | None
    verdict: str | None
    outcome: str | None
    details: dict[str, Any] = Field(default_factory=dict)


class JobOut(BaseModel):
    id: str
    kind: JobKind
    model: str
    status: JobStatus
    stage: str | None
    progress: int = Field(ge=0, le=100)
    method: str | None
    attempts: int = Field(description="Runs of this job so far (a run lost with its worker is retried).")
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    queued_seconds: float | None = Field(description="From creation to the first start.")
    running_seconds: float | None = Field(description="From the first start to the end (or now).")
    error: str | None
    request_ids: list[str]
    candidate_version: int | None
    report_url: str | None = Field(description="Set once the verification report exists.")
    method_attempts: list[MethodAttempt]
