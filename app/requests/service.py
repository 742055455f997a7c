"""Deletion requests: intake, status changes, deadlines, cancellation.

Every status change goes through `change_status`, which also writes the timeline row, the audit event
and the webhook deliveries, in the caller's transaction. The pipeline calls it too.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import record
from app.db import new_id, utcnow
from app.errors import conflict, not_found, unprocessable
from app.outbox.celery_client import PLAN_TASK
from app.outbox.service import enqueue
from app.provenance.membership import TrainedVersion, versions_trained_on
from app.provenance.models import Sample
from app.registry.models import Model, VersionStatus
from app.requests.deadlines import days_left, deadline_for, extended_due_at
from app.requests.models import (
    DEADLINE_STATUSES,
    DeletionRequest,
    DeletionRequestModel,
    DeletionRequestSample,
    RequestEvent,
    RequestStatus,
)
from app.requests.schemas import DeletionRequestCreate
from app.security.auth import Principal
from app.security.subjects import subject_hmac
from app.settings import get_settings
from app.webhooks.events import EventType, request_event
from app.webhooks.service import checked_url, enqueue_event

ENTITY_TYPE = "deletion_request"

S = RequestStatus
# Which status may follow which. Re-entering unlearning from verifying is the escalation chain; going
# back to queued is a job retried after its worker died; failed back to resolved is a retry
# (app.requests.retry).
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({S.RECEIVED}),
    S.RECEIVED: frozenset({S.RESOLVED, S.NO_DATA, S.CANCELED, S.FAILED}),
    S.RESOLVED: frozenset({S.QUEUED, S.COMPLETED, S.CANCELED, S.FAILED}),
    S.QUEUED: frozenset({S.RESOLVED, S.UNLEARNING, S.COMPLETED, S.CANCELED, S.FAILED}),
    S.UNLEARNING: frozenset({S.QUEUED, S.VERIFYING, S.COMPLETED, S.FAILED}),
    S.VERIFYING: frozenset({S.QUEUED, S.UNLEARNING, S.COMPLETED, S.FAILED}),
    S.FAILED: frozenset({S.RESOLVED}),
}
CANCELABLE = frozenset({S.RECEIVED, S.RESOLVED, S.QUEUED})
# Per-model progress row states written at intake and on cancellation (the pipeline adds its own).
MODEL_PENDING = "pending"
MODEL_CANCELED = "canceled"
# Versions that can never serve do not hold data in the sense of a deletion (tainted ones neither).
DEAD_VERSION_STATUSES = (VersionStatus.REJECTED, VersionStatus.FAILED)


class InvalidTransition(ValueError):
    pass


class RequestState(Protocol):
    """What answers and announcements read of a request: a DeletionRequest, or the draft of a bulk
    writer (app.requests.intake)."""

    id: str
    tenant_id: str
    status: str
    regime: str
    method: str
    callback_url: str | None
    received_at: datetime
    due_at: datetime
    extension_reason: str | None
    extended_at: datetime | None
    completed_at: datetime | None
    failure_reason: str | None
    updated_at: datetime


@dataclass
class RequestSnapshot:
    """A request's columns as a plain object: what the batched intake writes and the status read answers
    from (a DeletionRequest costs far more to build)."""

    id: str
    tenant_id: str
    subject_hmac: str | None
    regime: str
    method: str
    requested_models: list[str] | None
    callback_url: str | None
    received_at: datetime
    due_at: datetime
    updated_at: datetime
    status: str = ""
    extension_reason: str | None = None
    extended_at: datetime | None = None
    completed_at: datetime | None = None
    failure_reason: str | None = None


@dataclass(frozen=True)
class TimelineEntryRow:
    """A timeline row as a plain object."""

    from_status: str | None
    to_status: str
    at: datetime
    detail: dict[str, Any]


class TimelineStep(Protocol):
    """A timeline row as answers show it: a RequestEvent, or a bulk writer's step."""

    from_status: str | None
    to_status: str
    at: datetime
    detail: dict[str, Any]


def deadline_runs(status: str) -> bool:
    """Open and failed requests (DEADLINE_STATUSES) still owe the data subject an answer."""
    return status in DEADLINE_STATUSES


def days_left_of(request: RequestState, now: datetime | None = None) -> int:
    """Days left until due; frozen at the moment a request closed (completed_at, else its last change),
    so a finished request shows the margin it finished with rather than a count going ever negative."""
    if not deadline_runs(request.status):
        return days_left(request.due_at, request.completed_at or request.updated_at)
    return days_left(request.due_at, now)


def is_overdue_request(request: RequestState, now: datetime | None = None) -> bool:
    return deadline_runs(request.status) and request.due_at < (now or utcnow())


# ---------------------------------------------------------------- status changes


def change_status(
    session: Session,
    request: DeletionRequest,
    to_status: str,
    *,
    actor: str,
    detail: dict[str, Any] | None = None,
) -> RequestEvent | None:
    """Move `request` to `to_status` with its timeline row, audit event and webhooks; answers the
    timeline row.

    Answers None (and writes nothing) when the request already has that status, so a redelivered task
    can call it again; raises InvalidTransition for a change the life cycle does not allow.
    """
    from_status = request.status
    to_status = RequestStatus(to_status)
    if from_status == to_status:
        return None
    if to_status not in TRANSITIONS.get(from_status, frozenset()):
        raise InvalidTransition(f"a {from_status} request cannot become {to_status}")
    detail = dict(detail or {})
    now = utcnow()
    request.status = to_status
    request.updated_at = now
    if to_status == S.COMPLETED:
        request.completed_at = now
    if to_status == S.FAILED:
        request.failure_reason = str(detail.get("reason") or "unlearning failed")
    timeline_row = RequestEvent(
        request_id=request.id, from_status=from_status, to_status=to_status, at=now, detail=detail
    )
    session.add(timeline_row)
    event = request_event(to_status)
    if event is not None:
        _announce(session, request, event, {"previous_status": from_status, **detail})
    # Chained into the tenant's audit trail when the transaction commits (app.audit.service).
    action, data = audit_change(from_status, to_status, detail)
    record(session, request.tenant_id, ENTITY_TYPE, request.id, action, data, actor)
    return timeline_row


def audit_change(
    from_status: str | None, to_status: str, detail: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The audit action and data of a status change."""
    return f"{ENTITY_TYPE}.{to_status}", {"from": from_status, "to": to_status, **detail}


def announcement(request: RequestState, extra: dict[str, Any]) -> dict[str, Any]:
    """The webhook payload announcing the request's current state."""
    return {
        "id": request.id,
        "status": request.status,
        "regime": request.regime,
        "due_at": request.due_at.isoformat(),
        "days_left": days_left_of(request),
        **extra,
    }


def _announce(session: Session, request: DeletionRequest, event: EventType, extra: dict[str, Any]) -> None:
    payload = announcement(request, extra)
    enqueue_event(session, request.tenant_id, event, payload, request.callback_url, request.id)


# ---------------------------------------------------------------- intake


@dataclass(frozen=True)
class AffectedModel:
    id: str
    name: str


@dataclass
class Intake:
    """A request just created, with what its answer shows (known in memory: no re-read)."""

    request: RequestState
    sample_count: int
    models: list[AffectedModel]
    events: Sequence[TimelineStep]


def _subject_samples(session: Session, tenant_id: str, hmac_of_subject: str) -> list[tuple[int, bool]]:
    rows = session.execute(
        select(Sample.id, Sample.erased_at.is_not(None)).where(
            Sample.tenant_id == tenant_id, Sample.subject_hmac == hmac_of_subject
        )
    )
    return [(sample_id, erased) for sample_id, erased in rows]


def _listed_samples(session: Session, tenant_id: str, sample_ids: list[int]) -> list[tuple[int, bool]]:
    wanted = sorted(set(sample_ids))
    rows = session.execute(
        select(Sample.id, Sample.erased_at.is_not(None)).where(
            Sample.tenant_id == tenant_id, Sample.id.in_(wanted)
        )
    ).all()
    unknown = sorted(set(wanted) - {sample_id for sample_id, _ in rows})
    if unknown:
        shown = ", ".join(str(sample_id) for sample_id in unknown[:20])
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        raise unprocessable(f"unknown sample ids: {shown}{more}", "unknown-samples")
    return [(sample_id, erased) for sample_id, erased in rows]


def live_models(hits: Iterable[TrainedVersion], allowed: Container[str] | None = None) -> list[AffectedModel]:
    """The models among `hits` with a live version (not tainted, rejected or failed), by name; only
    those whose id is in `allowed` when the client named models."""
    names: dict[str, str] = {}
    for hit in hits:
        if not hit.tainted and hit.status not in DEAD_VERSION_STATUSES:
            names.setdefault(hit.model_id, hit.model_name)
    return sorted(
        (
            AffectedModel(model_id, name)
            for model_id, name in names.items()
            if allowed is None or model_id in allowed
        ),
        key=lambda m: m.name,
    )


def intake_steps(
    holds_data: bool, sample_count: int, models: Sequence[AffectedModel]
) -> list[tuple[str, dict[str, Any]]]:
    """The status changes (and their timeline details) of a new request: received, then resolved when
    something is held (samples not yet erased, or a live model trained on them), else no_data. A
    resolved request also gets its planning task."""
    steps: list[tuple[str, dict[str, Any]]] = [(S.RECEIVED, {"samples": sample_count})]
    if holds_data:
        steps.append((S.RESOLVED, {"models": [model.name for model in models]}))
    else:
        steps.append((S.NO_DATA, {}))
    return steps


def _named_models(session: Session, tenant_id: str, names: Iterable[str]) -> list[Model]:
    wanted = list(dict.fromkeys(names))
    found = list(session.scalars(select(Model).where(Model.tenant_id == tenant_id, Model.name.in_(wanted))))
    unknown = sorted(set(wanted) - {model.name for model in found})
    if unknown:
        raise unprocessable(f"unknown models: {', '.join(unknown)}", "unknown-models")
    return found


def plan_task_payload(request_ids: Iterable[str]) -> dict[str, Any]:
    """The planning task of these requests (one task may plan many: see MERGEABLE_TASKS)."""
    return {"request_ids": list(request_ids)}


def create_request(session: Session, principal: Principal, payload: DeletionRequestCreate) -> Intake:
    """Resolve the subject or samples to what is held, and record the request, its samples, its models,
    its timeline, the audit events and (when there is work) the planning task; no commit.

    The ORM path, for databases other than Postgres; on Postgres the API records requests in batches
    (app.requests.intake), by the same rules (intake_steps, live_models, change_status's facts)."""
    tenant_id = principal.tenant_id
    callback_url = checked_url(payload.callback_url) if payload.callback_url is not None else None
    named = _named_models(session, tenant_id, payload.models) if payload.models is not None else None
    hmac_of_subject = subject_hmac(payload.subject_id) if payload.subject_id is not None else None
    if hmac_of_subject is not None:
        samples = _subject_samples(session, tenant_id, hmac_of_subject)
    else:
        samples = _listed_samples(session, tenant_id, payload.sample_ids or [])
    sample_ids = [sample_id for sample_id, _ in samples]
    hits = versions_trained_on(session, tenant_id, sample_ids=sample_ids) if sample_ids else []
    models = live_models(hits, {model.id for model in named} if named is not None else None)
    holds_data = bool(models) or any(not erased for _, erased in samples)

    received_at = utcnow()
    request = DeletionRequest(
        id=new_id(),
        tenant_id=tenant_id,
        subject_hmac=hmac_of_subject,
        status=None,
        regime=payload.regime,
        method=payload.method,
        requested_models=payload.models,
        callback_url=callback_url,
        received_at=received_at,
        due_at=deadline_for(payload.regime, received_at, get_settings()).due_at,
        updated_at=received_at,
    )
    session.add(request)
    session.add_all(
        DeletionRequestSample(request_id=request.id, sample_id=sample_id) for sample_id in sample_ids
    )
    # One flush at the end: the request is inserted once with its final status, and each table's rows
    # go out as one batch (intake is the hot path).
    with session.no_autoflush:
        session.add_all(
            DeletionRequestModel(request_id=request.id, model_id=model.id, status=MODEL_PENDING)
            for model in models
        )
        events = [
            change_status(session, request, to_status, actor=principal.actor, detail=detail)
            for to_status, detail in intake_steps(holds_data, len(sample_ids), models)
        ]
        if holds_data:
            enqueue(session, PLAN_TASK, plan_task_payload([request.id]))
    session.flush()
    return Intake(
        request=request,
        sample_count=len(sample_ids),
        models=models,
        events=[event for event in events if event is not None],
    )


# ---------------------------------------------------------------- reading


def get_request(
    session: Session, tenant_id: str, request_id: str, *, for_update: bool = False
) -> DeletionRequest:
    stmt = select(DeletionRequest).where(
        DeletionRequest.id == request_id, DeletionRequest.tenant_id == tenant_id
    )
    if for_update:
        stmt = stmt.with_for_update()
    request = session.scalars(stmt).one_or_none()
    if request is None:
        raise not_found("deletion request", request_id)
    return request


# ---------------------------------------------------------------- cancel and extend


def cancel_request(
    session: Session, principal: Principal, request_id: str, reason: str | None = None
) -> DeletionRequest:
    """Cancel before unlearning starts; 409 once it has started or ended."""
    request = get_request(session, principal.tenant_id, request_id, for_update=True)
    if request.status not in CANCELABLE:
        raise conflict(
            f"the request is {request.status}: only a request not yet unlearning can be canceled",
            "not-cancelable",
        )
    for progress in session.scalars(
        select(DeletionRequestModel).where(DeletionRequestModel.request_id == request.id)
    ):
        progress.status = MODEL_CANCELED
    change_status(
        session, request, S.CANCELED, actor=principal.actor, detail={"reason": reason} if reason else {}
    )
    return request


def extend_deadline(
    session: Session, principal: Principal, request_id: str, reason: str, days: int | None
) -> DeletionRequest:
    """Push due_at back with a recorded reason, within what the regime allows."""
    request = get_request(session, principal.tenant_id, request_id, for_update=True)
    if not deadline_runs(request.status):
        raise conflict(f"the request is {request.status}: its deadline no longer runs", "request-closed")
    settings = get_settings()
    latest = deadline_for(request.regime, request.received_at, settings).latest_due_at
    if request.due_at >= latest:
        raise conflict("the deadline already is the latest the regime allows", "extension-exhausted")
    try:
        new_due = extended_due_at(request.regime, request.received_at, request.due_at, settings, days)
    except ValueError as exc:
        raise unprocessable(str(exc), "extension-too-long") from exc
    previous_due = request.due_at
    now = utcnow()
    request.due_at, request.extension_reason, request.extended_at, request.updated_at = (
        new_due,
        reason,
        now,
        now,
    )
    record(
        session,
        request.tenant_id,
        ENTITY_TYPE,
        request.id,
        f"{ENTITY_TYPE}.extended",
        {"from_due_at": previous_due, "to_due_at": new_due, "reason": reason},
        principal.actor,
    )
    _announce(session, request, EventType.REQUEST_EXTENDED, {"previous_due_at": previous_due.isoformat()})
    return request
