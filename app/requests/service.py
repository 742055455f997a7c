"""Deletion requests: reading, cancellation, retry, deadline extension (intake is app.requests.intake).

Every status change goes through app.requests.lifecycle, which also writes the timeline row, the audit
event and the webhook deliveries, in the caller's transaction. The pipeline calls it too.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import record
from app.db import utcnow
from app.errors import conflict, not_found, unprocessable
from app.outbox.celery_client import PLAN_TASK
from app.outbox.service import enqueue
from app.requests import lifecycle
from app.requests.deadlines import deadline_for, extended_due_at
from app.requests.lifecycle import ENTITY_TYPE, announce, plan_task_payload
from app.requests.models import DeletionRequest
from app.security.auth import Principal
from app.settings import get_settings
from app.webhooks.events import EventType

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
    """Cancel before unlearning starts; NotCancelable (409) once it has started or ended."""
    request = get_request(session, principal.tenant_id, request_id, for_update=True)
    lifecycle.cancel(session, request, actor=principal.actor, reason=reason)
    return request


def retry_request(session: Session, principal: Principal, request_id: str) -> DeletionRequest:
    """Retry a failed request: its failed models back to planning, and the planning task (through the
    outbox), which gives each a new unlearning job; NotRetryable (409) for any other request."""
    request = get_request(session, principal.tenant_id, request_id, for_update=True)
    lifecycle.retry(session, request, actor=principal.actor)
    enqueue(session, PLAN_TASK, plan_task_payload([request.id]))
    session.flush()
    return request


def extend_deadline(
    session: Session, principal: Principal, request_id: str, reason: str, days: int | None
) -> DeletionRequest:
    """Push due_at back with a recorded reason, within what the regime allows."""
    request = get_request(session, principal.tenant_id, request_id, for_update=True)
    if not lifecycle.deadline_runs(request.status):
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
    announce(session, request, EventType.REQUEST_EXTENDED, {"previous_due_at": previous_due.isoformat()})
    return request
