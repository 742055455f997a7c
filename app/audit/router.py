from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from app.audit.checkpoints import check_latest
from app.audit.models import AuditEvent
from app.audit.schemas import AuditEventOut, AuditVerification, CheckpointOut
from app.audit.service import list_filters, verify_chain
from app.db import SessionDep
from app.pagination import Page, PageParamsDep, paginate
from app.security.auth import Principal, require_scope
from app.security.scopes import Scope

router = APIRouter(prefix="/v1/audit", tags=["audit"])
AuditReader = Annotated[Principal, Depends(require_scope(Scope.AUDIT_READ))]


@router.get("", response_model=Page[AuditEventOut], summary="List audit events (oldest first)")
def list_audit_events(
    principal: AuditReader,
    session: SessionDep,
    page: PageParamsDep,
    entity_type: Annotated[str | None, Query(description="e.g. model_version, alias")] = None,
    entity_id: str | None = None,
    action: str | None = None,
    since: Annotated[datetime | None, Query(description="created at or after")] = None,
    until: Annotated[datetime | None, Query(description="created before")] = None,
) -> Page[AuditEventOut]:
    """The tenant's audit events in chain order (seq), filtered by entity, action and time."""
    conditions = list_filters(principal.tenant_id, entity_type, entity_id, action, since, until)
    events, next_cursor = paginate(session, select(AuditEvent).where(*conditions), [AuditEvent.seq], page)
    return Page(items=[AuditEventOut.model_validate(event) for event in events], next_cursor=next_cursor)


@router.get("/verify", response_model=AuditVerification, summary="Check the tenant's hash chain")
def verify_audit_chain(principal: AuditReader, session: SessionDep) -> AuditVerification:
    """Walks the chain from its first event, then checks it against the latest signed checkpoint kept
    outside the database: a truncated tail, a deleted chain or a chain recomputed after an edit verify
    on their own, but not against the checkpoint."""
    chain = verify_chain(session, principal.tenant_id)
    anchored = check_latest(session, principal.tenant_id)
    checkpoint = anchored.checkpoint
    return AuditVerification(
        ok=chain.ok and anchored.ok,
        checked=chain.checked,
        broken_at=chain.broken_at if not chain.ok else anchored.broken_at,
        reason=chain.reason if not chain.ok else anchored.reason,
        checkpoint=CheckpointOut(
            seq=checkpoint.seq,
            head_hash=checkpoint.head_hash,
            issued_at=checkpoint.issued_at,
            key_id=checkpoint.key_id,
            key_trusted=anchored.key_trusted,
        )
        if checkpoint is not None
        else None,
    )
