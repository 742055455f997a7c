"""What the dashboard lists: requests with filters, and the affected models of many requests at once."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session

from app.jobs.models import Job, JobAttempt
from app.provenance.membership import training_sample_ids
from app.provenance.models import Sample
from app.registry.models import Model, ModelVersion
from app.requests.models import (
    ACTION_NEEDED_STATUSES,
    DEADLINE_STATUSES,
    DeletionRequest,
    DeletionRequestModel,
    DeletionRequestSample,
    Regime,
    RequestStatus,
)
from app.requests.schemas import ModelProgress


@dataclass(frozen=True)
class RequestFilters:
    status: RequestStatus | None = None
    regime: Regime | None = None
    model: str | None = None
    overdue: bool = False
    action_needed: bool = False  # failed requests: someone has to retry, extend or answer
    # Keyed HMAC of a searched subject id (the id itself is never kept or echoed).
    subject_hmac: str | None = None

    @property
    def active(self) -> bool:
        return any(
            (self.status, self.regime, self.model, self.overdue, self.action_needed, self.subject_hmac)
        )


def filtered_requests(
    tenant_id: str, filters: RequestFilters, now: datetime
) -> Select[tuple[DeletionRequest]]:
    stmt = select(DeletionRequest).where(DeletionRequest.tenant_id == tenant_id)
    if filters.status is not None:
        stmt = stmt.where(DeletionRequest.status == filters.status)
    if filters.regime is not None:
        stmt = stmt.where(DeletionRequest.regime == filters.regime)
    if filters.subject_hmac is not None:
        stmt = stmt.where(DeletionRequest.subject_hmac == filters.subject_hmac)
    if filters.model:
        stmt = stmt.where(
            exists()
            .where(DeletionRequestModel.request_id == DeletionRequest.id)
            .where(DeletionRequestModel.model_id == Model.id)
            .where(Model.tenant_id == tenant_id, Model.name == filters.model)
        )
    if filters.overdue:
        stmt = stmt.where(DeletionRequest.status.in_(DEADLINE_STATUSES), DeletionRequest.due_at < now)
    if filters.action_needed:
        stmt = stmt.where(DeletionRequest.status.in_(ACTION_NEEDED_STATUSES))
    return stmt


def action_needed_count(session: Session, tenant_id: str) -> int:
    """How many of the tenant's requests need someone to act."""
    return int(
        session.scalar(
            select(func.count()).where(
                DeletionRequest.tenant_id == tenant_id, DeletionRequest.status.in_(ACTION_NEEDED_STATUSES)
            )
        )
        or 0
    )


def models_by_request(session: Session, request_ids: Sequence[str]) -> dict[str, list[ModelProgress]]:
    """Each request's per-model progress (as GET /v1/deletion-requests/{id} shows it), in four queries
    for a whole page of requests."""
    if not request_ids:
        return {}
    rows = session.execute(
        select(DeletionRequestModel, Model.name, Job)
        .join(Model, Model.id == DeletionRequestModel.model_id)
        .outerjoin(Job, Job.id == DeletionRequestModel.job_id)
        .where(DeletionRequestModel.request_id.in_(list(request_ids)))
        .order_by(DeletionRequestModel.request_id, Model.name)
    ).all()
    version_ids = {v for row, _, _ in rows for v in (row.from_version_id, row.to_version_id) if v}
    numbers: dict[str, int] = {}
    if version_ids:
        versions = select(ModelVersion.id, ModelVersion.version).where(ModelVersion.id.in_(version_ids))
        numbers = {version_id: number for version_id, number in session.execute(versions)}
    job_ids = [job.id for _, _, job in rows if job is not None]
    verdicts: dict[str, str | None] = {}
    if job_ids:
        for job_id, verdict in session.execute(
            select(JobAttempt.job_id, JobAttempt.verdict)
            .where(JobAttempt.job_id.in_(job_ids))
            .order_by(JobAttempt.job_id, JobAttempt.attempt, JobAttempt.id)
        ):
            verdicts[job_id] = verdict  # the last attempt's verdict wins
    progress: dict[str, list[ModelProgress]] = defaultdict(list)
    for row, name, job in rows:
        progress[row.request_id].append(
            ModelProgress(
                model=name,
                status=row.status,
                job_id=row.job_id,
                stage=job.stage if job else None,
                progress=job.progress if job else None,
                method=job.method if job else None,
                verdict=verdicts.get(job.id) if job else None,
                from_version=numbers.get(row.from_version_id),
                to_version=numbers.get(row.to_version_id),
            )
        )
    return progress


@dataclass(frozen=True)
class HeldRequest:
    """A deletion request whose subject's data a model version still holds."""

    id: str
    status: str
    due_at: datetime


def requests_held_by(session: Session, version: ModelVersion) -> list[HeldRequest]:
    """Open and failed requests concerning the version's model whose samples trained the version: what
    it serves while the deletion is not done. Oldest due first."""
    if version.training_root_id is None:  # no recorded training set: nothing to tell
        return []
    trained_on = training_sample_ids(version).where(Sample.id == DeletionRequestSample.sample_id).exists()
    holds = (
        select(DeletionRequestSample.request_id)
        .where(DeletionRequestSample.request_id == DeletionRequest.id, trained_on)
        .exists()
    )
    rows = session.execute(
        select(DeletionRequest.id, DeletionRequest.status, DeletionRequest.due_at)
        .join(
            DeletionRequestModel,
            (DeletionRequestModel.request_id == DeletionRequest.id)
            & (DeletionRequestModel.model_id == version.model_id),
        )
        .where(
            DeletionRequest.tenant_id == version.tenant_id,
            DeletionRequest.status.in_(DEADLINE_STATUSES),
            holds,
        )
        .order_by(DeletionRequest.due_at, DeletionRequest.id)
    )
    return [HeldRequest(request_id, status, due_at) for request_id, status, due_at in rows]
