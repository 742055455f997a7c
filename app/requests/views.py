"""What the deletion-request endpoints answer: a request with its progress and timeline, and lists."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, String, bindparam, exists, func, literal_column, select
from sqlalchemy.orm import Session

from app import asyncdb
from app.db import utcnow
from app.errors import not_found
from app.jobs.models import Job, JobAttempt, JobRequest
from app.pagination import PageParams, paginate
from app.registry.models import Model, ModelVersion
from app.requests.lifecycle import (
    RequestSnapshot,
    RequestState,
    TimelineEntryRow,
    TimelineStep,
    days_left_of,
    is_overdue_request,
)
from app.requests.models import (
    DEADLINE_STATUSES,
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

if TYPE_CHECKING:  # intake builds its answers with this module
    from app.requests.intake import Intake

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"


def request_url(request_id: str) -> str:
    return f"/v1/deletion-requests/{request_id}"


def summary(request: RequestState, now: datetime | None = None) -> dict[str, Any]:
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


def _timeline(events: Sequence[TimelineStep]) -> list[TimelineEntry]:
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


def _details(request: RequestState, **parts: Any) -> dict[str, Any]:
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


# The parts of a request's detail, each one query on the request's id (a value, or a bind parameter
# when app.asyncdb compiles them into one statement for the status read of api_detail).


def _sample_count_query(request_id: Any) -> Select[Any]:
    return select(func.count()).where(DeletionRequestSample.request_id == request_id)


def _timeline_query(request_id: Any) -> Select[Any]:
    return (
        select(RequestEvent.from_status, RequestEvent.to_status, RequestEvent.at, RequestEvent.detail)
        .where(RequestEvent.request_id == request_id)
        .order_by(RequestEvent.id)
    )


def _progress_query(request_id: Any) -> Select[Any]:
    """Per affected model: name, status, job id, stage, progress, method, the verdict of the job's last
    attempt, the from and to version numbers."""
    progress = DeletionRequestModel
    last_verdict = (
        select(JobAttempt.verdict)
        .where(JobAttempt.job_id == progress.job_id)
        .order_by(JobAttempt.attempt.desc(), JobAttempt.id.desc())
        .limit(literal_column("1"))
        .scalar_subquery()
    )

    def version_number(version_id: Any) -> Any:
        return select(ModelVersion.version).where(ModelVersion.id == version_id).scalar_subquery()

    return (
        select(
            Model.name,
            progress.status,
            progress.job_id,
            Job.stage,
            Job.progress,
            Job.method,
            last_verdict,
            version_number(progress.from_version_id),
            version_number(progress.to_version_id),
        )
        .join(Model, Model.id == progress.model_id)
        .outerjoin(Job, Job.id == progress.job_id)
        .where(progress.request_id == request_id)
        .order_by(Model.name)
    )


def _job_ids_query(request_id: Any) -> Select[Any]:
    return select(JobRequest.job_id).where(JobRequest.request_id == request_id)


_PROGRESS_FIELDS = (
    "model",
    "status",
    "job_id",
    "stage",
    "progress",
    "method",
    "verdict",
    "from_version",
    "to_version",
)


def _detail(
    request: RequestState,
    sample_count: int,
    timeline: Sequence[TimelineStep],
    progress_rows: Iterable[Sequence[Any]],
    requested_job_ids: Iterable[str],
) -> DeletionRequestOut:
    progress = [ModelProgress(**dict(zip(_PROGRESS_FIELDS, row, strict=True))) for row in progress_rows]
    job_ids = list(dict.fromkeys([p.job_id for p in progress if p.job_id] + list(requested_job_ids)))
    return DeletionRequestOut(
        **_details(
            request, models=progress, sample_count=sample_count, job_ids=job_ids, timeline=_timeline(timeline)
        )
    )


def detailed(session: Session, request: DeletionRequest) -> DeletionRequestOut:
    return _detail(
        request,
        session.scalar(_sample_count_query(request.id)) or 0,
        [TimelineEntryRow(*row) for row in session.execute(_timeline_query(request.id))],
        session.execute(_progress_query(request.id)).all(),
        session.scalars(_job_ids_query(request.id)),
    )


_REQUEST_FIELDS = tuple(field.name for field in fields(RequestSnapshot))


@lru_cache(maxsize=1)
def _detail_sql() -> str:
    """The status read in one statement: the request's columns, then its sample count, timeline, model
    progress and job ids (JSON arrays); parameters request_id and tenant_id."""
    request_id = bindparam("request_id", type_=String)
    request = select(*(DeletionRequest.__table__.c[name] for name in _REQUEST_FIELDS)).where(
        DeletionRequest.id == request_id, DeletionRequest.tenant_id == bindparam("tenant_id", type_=String)
    )
    parts = [
        f"({asyncdb.compiled_sql(_sample_count_query(request_id))})",
        asyncdb.json_rows_sql(asyncdb.compiled_sql(_timeline_query(request_id)), 4),
        asyncdb.json_rows_sql(asyncdb.compiled_sql(_progress_query(request_id)), len(_PROGRESS_FIELDS)),
        asyncdb.json_rows_sql(asyncdb.compiled_sql(_job_ids_query(request_id)), 1),
    ]
    return f"SELECT requested.*, {', '.join(parts)} FROM ({asyncdb.compiled_sql(request)}) AS requested"


async def api_detail(pool: asyncdb.AsyncPool, tenant_id: str, request_id: str) -> DeletionRequestOut:
    """The answer of GET /v1/deletion-requests/{id} on Postgres: one statement, no ORM."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            _detail_sql(), {"request_id": request_id, "tenant_id": tenant_id}, prepare=True
        )
        row = await cursor.fetchone()
    if row is None:
        raise not_found("deletion request", request_id)
    width = len(_REQUEST_FIELDS)
    sample_count, timeline, progress, job_ids = row[width:]
    timeline_rows = [
        TimelineEntryRow(from_status, to_status, datetime.fromisoformat(at), detail or {})
        for from_status, to_status, at, detail in timeline
    ]
    request = RequestSnapshot(**dict(zip(_REQUEST_FIELDS, row[:width], strict=True)))
    return _detail(request, sample_count, timeline_rows, progress, (job_id for (job_id,) in job_ids))


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
        stmt = stmt.where(DeletionRequest.status.in_(DEADLINE_STATUSES), DeletionRequest.due_at < now)
    elif overdue is False:
        stmt = stmt.where(~(DeletionRequest.status.in_(DEADLINE_STATUSES) & (DeletionRequest.due_at < now)))
    items, next_cursor = paginate(
        session, stmt, [DeletionRequest.received_at, DeletionRequest.id], page, descending=True
    )
    return DeletionRequestPage(
        items=[DeletionRequestSummary(**summary(item, now)) for item in items], next_cursor=next_cursor
    )
