"""Deletion requests: intake, reading, deadlines, cancellation.

Every status change goes through app.requests.lifecycle, which also writes the timeline row, the audit
event and the webhook deliveries, in the caller's transaction. The pipeline calls it too.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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
from app.requests import lifecycle
from app.requests.deadlines import deadline_for, extended_due_at
from app.requests.lifecycle import (
    ENTITY_TYPE,
    RequestState,
    TimelineStep,
    announce,
    change_status,
    is_terminal,
)
from app.requests.models import (
    DeletionRequest,
    DeletionRequestModel,
    DeletionRequestSample,
    ModelStatus,
    RequestStatus,
)
from app.requests.schemas import DeletionRequestCreate
from app.security.auth import Principal
from app.security.subjects import subject_hmac
from app.settings import get_settings
from app.webhooks.events import EventType
from app.webhooks.service import checked_url

# Versions that can never serve do not hold data in the sense of a deletion (tainted ones neither).
DEAD_VERSION_STATUSES = (VersionStatus.REJECTED, VersionStatus.FAILED)


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
    steps: list[tuple[str, dict[str, Any]]] = [(RequestStatus.RECEIVED, {"samples": sample_count})]
    if holds_data:
        steps.append((RequestStatus.RESOLVED, {"models": [model.name for model in models]}))
    else:
        steps.append((RequestStatus.NO_DATA, {}))
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
    (app.requests.intake), by the same rules (intake_steps, live_models, lifecycle's facts)."""
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
            DeletionRequestModel(request_id=request.id, model_id=model.id, status=ModelStatus.PENDING)
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
    """Cancel before unlearning starts; NotCancelable (409) once it has started or ended."""
    request = get_request(session, principal.tenant_id, request_id, for_update=True)
    lifecycle.cancel(session, request, actor=principal.actor, reason=reason)
    return request


def extend_deadline(
    session: Session, principal: Principal, request_id: str, reason: str, days: int | None
) -> DeletionRequest:
    """Push due_at back with a recorded reason, within what the regime allows."""
    request = get_request(session, principal.tenant_id, request_id, for_update=True)
    if is_terminal(request.status):
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
