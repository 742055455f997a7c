"""The life cycle of a deletion request: which status may follow which, how a request's status follows the
progress of its models, and the one function every status change goes through.

A request is `received`, then `resolved` (something is held) or `no_data`. Each affected model has its
own progress row (deletion_request_models, ModelStatus): pending until planned into a job, then queued,
unlearning, verifying, and completed, failed or canceled. The request's status follows those rows
(`target_status`): the least advanced open model, `failed` as soon as one model's escalation chain is
spent, `completed` once every model it concerns serves a version without its samples; completing issues
the deletion certificate in the same transaction.

The API (intake, cancellation) and the workers (planning, the pipeline's stages) change requests only
through this module. What a change writes (timeline row, webhook deliveries, audit event) is decided
once, by `status_change`; `change_status` writes it in a session, the batched intake
(app.requests.intake) with its batch. Adding a transition is one entry in TRANSITIONS. The state names
are the columns' vocabularies, in app.requests.models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from app.audit.service import AuditEntry, queue_entries
from app.db import for_update, utcnow
from app.domain import DomainError
from app.jobs.models import Job, JobRequest
from app.requests.deadlines import days_left
from app.requests.models import (
    DEADLINE_STATUSES,
    OPEN_STATUSES,
    DeletionRequest,
    DeletionRequestModel,
    ModelStatus,
    RequestEvent,
    RequestStatus,
)
from app.webhooks.events import EventType, request_event
from app.webhooks.service import (
    SubscriptionTarget,
    active_subscriptions,
    delivery_rows,
    delivery_targets,
    enqueue_event,
    event_envelope,
    write_deliveries,
)

# The entity of a request's audit events.
ENTITY_TYPE = "deletion_request"

S = RequestStatus
M = ModelStatus
# Which status may follow which. Re-entering unlearning from verifying is the escalation chain; going
# back to queued is a job retried after its worker died; failed back to resolved is a retry (`retry`).
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({S.RECEIVED}),
    S.RECEIVED: frozenset({S.RESOLVED, S.NO_DATA, S.CANCELED, S.FAILED}),
    S.RESOLVED: frozenset({S.QUEUED, S.COMPLETED, S.CANCELED, S.FAILED}),
    S.QUEUED: frozenset({S.RESOLVED, S.UNLEARNING, S.COMPLETED, S.CANCELED, S.FAILED}),
    S.UNLEARNING: frozenset({S.QUEUED, S.VERIFYING, S.COMPLETED, S.FAILED}),
    S.VERIFYING: frozenset({S.QUEUED, S.UNLEARNING, S.COMPLETED, S.FAILED}),
    S.FAILED: frozenset({S.RESOLVED}),
}
# Before unlearning starts a request may be canceled.
CANCELABLE = frozenset({S.RECEIVED, S.RESOLVED, S.QUEUED})
# Requests a planner may put into a job.
PLANNABLE = frozenset({S.RESOLVED, S.QUEUED})
# The open states in the order a request, and each of its models, moves through them (a model's
# `pending` counts as the request's `resolved`). A request follows its slowest open model and passes
# through every state in between (queued -> unlearning -> verifying when its other model was faster).
PROGRESS = (S.RESOLVED, S.QUEUED, S.UNLEARNING, S.VERIFYING)
MODEL_DONE = frozenset({M.COMPLETED, M.CANCELED})


class InvalidTransition(DomainError):
    """A status change the life cycle does not allow."""

    type_suffix = "invalid-transition"


class NotCancelable(DomainError):
    type_suffix = "not-cancelable"


class NotRetryable(DomainError):
    type_suffix = "not-retryable"


# ---------------------------------------------------------------- what a request looks like


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
    status: str | None = None  # none until received
    extension_reason: str | None = None
    extended_at: datetime | None = None
    completed_at: datetime | None = None
    failure_reason: str | None = None


class TimelineStep(Protocol):
    """A timeline row as answers show it: a RequestEvent, or a bulk writer's step."""

    from_status: str | None
    to_status: str
    at: datetime
    detail: dict[str, Any]


@dataclass(frozen=True)
class TimelineEntryRow:
    """A timeline row as a plain object."""

    from_status: str | None
    to_status: str
    at: datetime
    detail: dict[str, Any]


def is_terminal(status: str) -> bool:
    return status not in OPEN_STATUSES


def deadline_runs(status: str) -> bool:
    """Open and failed requests (DEADLINE_STATUSES) still owe the data subject an answer."""
    return status in DEADLINE_STATUSES


def days_left_of(request: RequestState, now: datetime | None = None) -> int:
    """Days left until due; frozen at the moment a request closed (completed_at, else its last change),
    so a finished request shows the margin it finished with rather than a count going ever negative. A
    failed request has not closed: its count runs on."""
    if not deadline_runs(request.status):
        return days_left(request.due_at, request.completed_at or request.updated_at)
    return days_left(request.due_at, now)


def is_overdue_request(request: RequestState, now: datetime | None = None) -> bool:
    return deadline_runs(request.status) and request.due_at < (now or utcnow())


# ---------------------------------------------------------------- status changes


@dataclass
class StatusChange:
    """What one status change of a request writes besides the request's own columns."""

    request_id: str
    timeline: TimelineEntryRow
    audit: AuditEntry
    deliveries: list[dict[str, Any]] = field(default_factory=list)  # webhooks (delivery_rows)

    def event_row(self) -> dict[str, Any]:
        """The timeline row as a row of request_events."""
        step = self.timeline
        return {
            "request_id": self.request_id,
            "from_status": step.from_status,
            "to_status": step.to_status,
            "at": step.at,
            "detail": step.detail,
        }


def status_change(
    request: RequestState,
    to_status: str,
    *,
    actor: str,
    detail: dict[str, Any] | None,
    subscriptions: Callable[[], Iterable[SubscriptionTarget]],
    now: datetime,
) -> StatusChange | None:
    """Move `request` (its columns) to `to_status` and answer what the change writes; `subscriptions`
    answers the tenant's active webhook subscriptions, asked only when the change is announced.

    None when the request already has that status (a redelivered task may ask again); InvalidTransition
    for a change the life cycle does not allow.
    """
    from_status = request.status
    to_status = RequestStatus(to_status)
    if from_status == to_status:
        return None
    if to_status not in TRANSITIONS.get(from_status, frozenset()):
        raise InvalidTransition(f"a {from_status} request cannot become {to_status}")
    detail = dict(detail or {})
    request.status = to_status
    request.updated_at = now
    if to_status == S.COMPLETED:
        request.completed_at = now
    if to_status == S.FAILED:
        request.failure_reason = str(detail.get("reason") or "unlearning failed")
    action = f"{ENTITY_TYPE}.{to_status}"
    data = {"from": from_status, "to": to_status, **detail}
    change = StatusChange(
        request.id,
        TimelineEntryRow(from_status, to_status, now, detail),
        AuditEntry(request.tenant_id, ENTITY_TYPE, request.id, action, data, actor),
    )
    event = request_event(to_status)
    targets = delivery_targets(subscriptions(), event, request.callback_url) if event is not None else ()
    if event is not None and targets:
        envelope = event_envelope(event, announcement(request, {"previous_status": from_status, **detail}))
        change.deliveries = delivery_rows(request.tenant_id, event, envelope, targets, request.id, now)
    return change


def change_status(
    session: Session,
    request: DeletionRequest,
    to_status: str,
    *,
    actor: str,
    detail: dict[str, Any] | None = None,
) -> TimelineEntryRow | None:
    """Move `request` to `to_status` with its timeline row, audit event and webhooks, in the session's
    transaction; answers the timeline row (None, and nothing written, when it already had that status).
    """
    now = utcnow()
    change = status_change(
        request,
        to_status,
        actor=actor,
        detail=detail,
        subscriptions=lambda: active_subscriptions(session, request.tenant_id),
        now=now,
    )
    if change is None:
        return None
    session.execute(insert(RequestEvent.__table__), [change.event_row()])
    write_deliveries(session, change.deliveries, now)
    # Chained into the tenant's audit trail when the transaction commits (app.audit.service).
    queue_entries(session, [change.audit])
    return change.timeline


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


def announce(session: Session, request: DeletionRequest, event: EventType, extra: dict[str, Any]) -> None:
    """Queue `event` about the request's current state for the tenant's subscribers and its callback."""
    payload = announcement(request, extra)
    enqueue_event(session, request.tenant_id, event, payload, request.callback_url, request.id)


def plan_task_payload(request_ids: Iterable[str]) -> dict[str, Any]:
    """The planning task of resolved requests (one task may plan many: see MERGEABLE_TASKS)."""
    return {"request_ids": list(request_ids)}


def cancel(session: Session, request: DeletionRequest, *, actor: str, reason: str | None = None) -> None:
    """Cancel a request (locked by the caller) with every model it concerns; NotCancelable once
    unlearning has started or the request has ended."""
    if request.status not in CANCELABLE:
        raise NotCancelable(
            f"the request is {request.status}: only a request not yet unlearning can be canceled"
        )
    for progress in session.scalars(
        select(DeletionRequestModel).where(DeletionRequestModel.request_id == request.id)
    ):
        progress.status = M.CANCELED
    change_status(session, request, S.CANCELED, actor=actor, detail={"reason": reason} if reason else {})


def retry(session: Session, request: DeletionRequest, *, actor: str) -> int:
    """Put a failed request (locked by the caller) back to planning: each failed model pending again (its
    old job stays on record through job_requests), the request resolved, its deadline unchanged; answers
    how many models wait for a new job. NotRetryable for a request that has not failed. The caller sends
    the planning task."""
    if request.status != S.FAILED:
        raise NotRetryable(f"the request is {request.status}: only a failed request can be retried")
    failed = list(
        session.scalars(
            for_update(
                select(DeletionRequestModel).where(
                    DeletionRequestModel.request_id == request.id, DeletionRequestModel.status == M.FAILED
                )
            )
        )
    )
    if not failed:
        raise NotRetryable("no model of the request failed: there is nothing to retry")
    for progress in failed:
        progress.status, progress.job_id = M.PENDING, None
        progress.from_version_id = progress.to_version_id = None
    earlier = session.scalar(
        select(func.count()).where(
            RequestEvent.request_id == request.id, RequestEvent.from_status == S.FAILED
        )
    )
    change_status(session, request, S.RESOLVED, actor=actor, detail={"retry": (earlier or 0) + 1})
    request.failure_reason = None  # the reason stays in the timeline and the audit trail
    return len(failed)


# ---------------------------------------------------------------- following the models' progress


def target_status(model_statuses: Iterable[str]) -> RequestStatus:
    """The status a request's per-model rows call for."""
    statuses = list(model_statuses)
    if not statuses:  # no model holds the samples: only Lethe's store does, and the purge erases them
        return S.COMPLETED
    if M.FAILED in statuses:
        return S.FAILED
    if all(status in MODEL_DONE for status in statuses):
        return S.COMPLETED if M.COMPLETED in statuses else S.CANCELED
    open_ranks = [
        PROGRESS.index(S.RESOLVED if status == M.PENDING else RequestStatus(status))
        for status in statuses
        if status not in MODEL_DONE
    ]
    return PROGRESS[min(open_ranks)]


def path_to(from_status: str, to_status: str) -> list[RequestStatus]:
    """The changes that take a request from `from_status` to `to_status`: the one allowed transition, or
    the open states in between when it moves forward through PROGRESS; InvalidTransition otherwise."""
    target = RequestStatus(to_status)
    if target in TRANSITIONS.get(from_status, frozenset()):
        return [target]
    if from_status in PROGRESS and target in PROGRESS:
        start, end = PROGRESS.index(from_status), PROGRESS.index(target)
        if start < end:
            return list(PROGRESS[start + 1 : end + 1])
    raise InvalidTransition(f"a {from_status} request cannot become {to_status}")


def sync_request(
    session: Session, request: DeletionRequest, *, actor: str, detail: dict[str, Any] | None = None
) -> None:
    """Bring the request's status in line with its per-model rows; completing it issues its certificate.
    A closed request is left alone. `detail` goes with the last change."""
    if is_terminal(request.status):
        return
    statuses = session.scalars(
        select(DeletionRequestModel.status).where(DeletionRequestModel.request_id == request.id)
    )
    target = target_status(statuses)
    if target == request.status or target == S.CANCELED:
        return
    *between, last = path_to(request.status, target)
    for status in between:
        change_status(session, request, status, actor=actor)
    change_status(session, request, last, actor=actor, detail=detail)
    if target == S.COMPLETED:
        # Imported here: app.certificates reads requests through app.requests.service, built on this.
        from app.certificates.service import issue_certificate

        issue_certificate(session, request, actor=actor)


def requests_of_job(session: Session, job_id: str, *, lock: bool = False) -> list[DeletionRequest]:
    """The job's requests, ordered by id (the lock order of every state change)."""
    stmt = (
        select(DeletionRequest)
        .join(JobRequest, JobRequest.request_id == DeletionRequest.id)
        .where(JobRequest.job_id == job_id)
        .order_by(DeletionRequest.id)
    )
    return list(session.scalars(for_update(stmt) if lock else stmt))


def join_job(
    session: Session, request: DeletionRequest, progress: DeletionRequestModel, job_id: str, *, actor: str
) -> None:
    """The request's model `progress` row (pending) is now planned into job `job_id`."""
    progress.job_id, progress.status = job_id, M.QUEUED
    session.flush()
    sync_request(session, request, actor=actor, detail={"job_id": job_id})


def move_models(
    session: Session,
    job: Job,
    to_status: ModelStatus,
    *,
    actor: str,
    detail: dict[str, Any] | None = None,
    **columns: Any,
) -> None:
    """Move the job's per-model rows (not the canceled ones) to `to_status`, setting `columns` on them
    (from_version_id, to_version_id), and each of the job's requests along (locked, in id order)."""
    for progress in session.scalars(
        select(DeletionRequestModel).where(
            DeletionRequestModel.job_id == job.id, DeletionRequestModel.model_id == job.model_id
        )
    ):
        if progress.status == M.CANCELED:
            continue
        progress.status = to_status
        for name, value in columns.items():
            setattr(progress, name, value)
    for request in requests_of_job(session, job.id, lock=True):
        sync_request(session, request, actor=actor, detail=detail)
