"""Retrying a failed request: its failed models go back to planning, as at intake, under the same
deadline (a failure does not reset the clock the regime set)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import conflict
from app.outbox.celery_client import PLAN_TASK
from app.outbox.service import enqueue
from app.requests.models import DeletionRequest, DeletionRequestModel, RequestEvent, RequestStatus
from app.requests.service import MODEL_PENDING, change_status, get_request, plan_task_payload
from app.security.auth import Principal


def retry_request(session: Session, principal: Principal, request_id: str) -> DeletionRequest:
    """Put a failed request back into the pipeline: each failed model is pending again (its old job
    stays on record), the request `resolved`, and a planning task leaves through the outbox, which gives
    every such model a new unlearning job. 409 for a request that has not failed. No commit."""
    request = get_request(session, principal.tenant_id, request_id, for_update=True)
    if request.status != RequestStatus.FAILED:
        raise conflict(f"the request is {request.status}: only a failed request can be retried", "not-failed")
    failed = list(
        session.scalars(
            select(DeletionRequestModel)
            .where(
                DeletionRequestModel.request_id == request.id,
                DeletionRequestModel.status == RequestStatus.FAILED,
            )
            .with_for_update()
        )
    )
    if not failed:
        raise conflict("no model of the request failed: there is nothing to retry", "nothing-to-retry")
    for row in failed:
        row.status, row.job_id, row.from_version_id, row.to_version_id = MODEL_PENDING, None, None, None
    earlier = session.scalar(
        select(func.count()).where(
            RequestEvent.request_id == request.id, RequestEvent.from_status == RequestStatus.FAILED
        )
    )
    change_status(
        session,
        request,
        RequestStatus.RESOLVED,
        actor=principal.actor,
        detail={"retry": int(earlier or 0) + 1, "models": len(failed)},
    )
    request.failure_reason = None  # the reason stays in the timeline and the audit trail
    enqueue(session, PLAN_TASK, plan_task_payload([request.id]))
    session.flush()
    return request
