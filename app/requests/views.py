"""What the deletion-request endpoints answer: a request with its progress and timeline, and lists."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.jobs.models import Job, JobAttempt, JobRequest
from app.pagination import PageParams, paginate
from app.registry.models import Model, ModelVersion
from app.requests.models import (
    OPEN_STATUSES,
    DeletionRequest,
    DeletionRequestModel,
    DeletionRequestSample,
    RequestEvent,
    RequestStatus,
)
from app.requests.schemas import (
    DeletionRequestCreated,
    DeletionRequestOut,
    DeletionRequestPage,
    DeletionRequestSummary,
    Extension,
    ModelProgress,
    TimelineEntry,
)
from app.requests.service import Intake, days_left_of, is_overdue_request

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"


def request_url(request_id: str) -> str:
    return f"/v1/deletion-requests/{request_id}"


def summary(request: DeletionRequest, now: datetime | None = None) -> dict[str, Any]:
    return {
        "id": request.id,
        "status": request.status,
        "regime": request.regime,
        "method": request.method,
        "received_at": request.received_at,
        "due_at": request.due_at,
        "days_left": days_left_of(request, now),
        "overdue": is_overdue_request(request, now),
        "completed_at": request.completed_at,
        "updated_at": request.updated_at,
    }


def _timeline(events: list[RequestEvent]) -> list[TimelineEntry]:
    return [
        TimelineEntry(from_status=e.from_status, to_status=e.to_status, at=e.at, detail=e.detail or {})
        for e in events
    ]


def combined_verdict(verdicts: Sequence[str | None]) -> str | None:
    """One verdict for a request: pass when every affected model passed, fail when one failed,
    inconclusive otherwise; None until every model has one."""
    if not verdicts or any(verdict is None for verdict in verdicts):
        return None
    if all(verdict == PASS for verdict in verdicts):
        return PASS
    return FAIL if FAIL in verdicts else INCONCLUSIVE


def _details(request: DeletionRequest, **parts: Any) -> dict[str, Any]:
    extension = (
        Extension(reason=request.extension_reason, extended_at=request.extended_at)
        if request.extension_reason and request.extended_at
        else None
    )
    progress: list[ModelProgress] = parts.pop("models")
    return {
        **summary(request),
        "models": progress,
        "verdict": combined_verdict([entry.verdict for entry in progress]),
        "promoted_versions": {p.model: p.to_version for p in progress if p.to_version is not None},
        "callback_url": request.callback_url,
        "extension": extension,
        "failure_reason": request.failure_reason,
        "certificate_url": (
            f"{request_url(request.id)}/certificate" if request.status == RequestStatus.COMPLETED else None
        ),
        **parts,
    }


def created(intake: Intake, callback_secret: str | None) -> DeletionRequestCreated:
    """The 202 answer, from what intake has in memory."""
    progress = [ModelProgress(model=model.name, status="pending") for model in intake.models]
    return DeletionRequestCreated(
        **_details(
            intake.request,
            models=progress,
            sample_count=intake.sample_count,
            job_ids=[],
            timeline=_timeline(intake.events),
        ),
        callback_secret=callback_secret,
    )


def _model_progress(session: Session, request_id: str) -> list[ModelProgress]:
    rows = session.execute(
        select(DeletionRequestModel, Model.name, Job)
        .join(Model, Model.id == DeletionRequestModel.model_id)
        .outerjoin(Job, Job.id == DeletionRequestModel.job_id)
        .where(DeletionRequestModel.request_id == request_id)
        .order_by(Model.name)
    ).all()
    version_ids = {v for row, _, _ in rows for v in (row.from_version_id, row.to_version_id) if v}
    numbers: dict[str, int] = {}
    if version_ids:
        rows_of_versions = session.execute(
            select(ModelVersion.id, ModelVersion.version).where(ModelVersion.id.in_(version_ids))
        )
        numbers = {version_id: number for version_id, number in rows_of_versions}
    job_ids = [job.id for _, _, job in rows if job is not None]
    verdicts: dict[str, str | None] = {}
    if job_ids:
        for job_id, verdict in session.execute(
            select(JobAttempt.job_id, JobAttempt.verdict)
            .where(JobAttempt.job_id.in_(job_ids))
            .order_by(JobAttempt.job_id, JobAttempt.attempt, JobAttempt.id)
        ):
            verdicts[job_id] = verdict  # the last attempt's verdict wins
    return [
        ModelProgress(
            model=name,
            status=row.status,
            job_id=row.job_id,
            stage=job.stage if job else None,
            progress=job.progress if job else None,
            method=job.method if job else None,
            verdict=verdicts.get(row.job_id) if row.job_id else None,
            from_version=numbers.get(row.from_version_id),
            to_version=numbers.get(row.to_version_id),
        )
        for row, name, job in rows
    ]


def detailed(session: Session, request: DeletionRequest) -> DeletionRequestOut:
    sample_count = session.scalar(select(func.count()).where(DeletionRequestSample.request_id == request.id))
    events = list(
        session.scalars(
            select(RequestEvent).where(RequestEvent.request_id == request.id).order_by(RequestEvent.id)
        )
    )
    progress = _model_progress(session, request.id)
    job_ids = list(
        dict.fromkeys(
            [p.job_id for p in progress if p.job_id]
            + list(session.scalars(select(JobRequest.job_id).where(JobRequest.request_id == request.id)))
        )
    )
    return DeletionRequestOut(
        **_details(
            request,
            models=progress,
            sample_count=sample_count or 0,
            job_ids=job_ids,
            timeline=_timeline(events),
        )
    )


def list_page(
    session: Session,
    tenant_id: str,
    page: PageParams,
    *,
    statuses: list[RequestStatus] | None = None,
    due_before: datetime | None = None,
    model: str | None = None,
    overdue: bool | None = None,
) -> DeletionRequestPage:
    now = utcnow()
    stmt = select(DeletionRequest).where(DeletionRequest.tenant_id == tenant_id)
    if statuses:
        stmt = stmt.where(DeletionRequest.status.in_(statuses))
    if due_before is not None:
        stmt = stmt.where(DeletionRequest.due_at < due_before)
    if model is not None:
        stmt = stmt.where(
            exists()
            .where(DeletionRequestModel.request_id == DeletionRequest.id)
            .where(DeletionRequestModel.model_id == Model.id)
            .where(Model.tenant_id == tenant_id, Model.name == model)
        )
    if overdue is True:
        stmt = stmt.where(DeletionRequest.status.in_(OPEN_STATUSES), DeletionRequest.due_at < now)
    elif overdue is False:
        stmt = stmt.where(~(DeletionRequest.status.in_(OPEN_STATUSES) & (DeletionRequest.due_at < now)))
    items, next_cursor = paginate(
        session, stmt, [DeletionRequest.received_at, DeletionRequest.id], page, descending=True
    )
    return DeletionRequestPage(
        items=[DeletionRequestSummary(**summary(item, now)) for item in items], next_cursor=next_cursor
    )
