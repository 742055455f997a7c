"""The audit trail's one writer (`record`) and its verifier.

Each event's hash is sha256(previous hash + canonical JSON of the event), chained per tenant from
GENESIS_HASH. `record` only queues the event on the session; just before the transaction commits, the
queued events are chained in one go: the tenant's `audit_heads` row is locked, each event gets the next
seq and its hashes, the head moves once. The head lock is thus held only for the commit itself, seq
numbers stay gap-free, and the head always names the last event: a changed, removed or truncated row
breaks the chain. A rolled-back transaction leaves no event. Callers pass ids and counts, never subject
identifiers in clear.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event as orm_event
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.models import GENESIS_HASH, AuditEvent, AuditHead
from app.db import utcnow

VERIFY_BATCH = 1000
_PENDING_KEY = "lethe.audit.pending"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_hash(prev_hash: str, event: AuditEvent) -> str:
    body = {
        "tenant_id": event.tenant_id,
        "seq": event.seq,
        "entity_type": event.entity_type,
        "entity_id": event.entity_id,
        "action": event.action,
        "data": event.data,
        "actor": event.actor,
        "created_at": event.created_at.isoformat(),
    }
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


def _lock_head(session: Session, tenant_id: str) -> AuditHead:
    head = session.scalars(
        select(AuditHead)
        .where(AuditHead.tenant_id == tenant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if head is None:  # tenants made by create_tenant have a head; this covers rows made otherwise
        head = AuditHead(tenant_id=tenant_id, seq=0, hash=GENESIS_HASH)
        session.add(head)
        session.flush()
    return head


def record(
    session: Session,
    tenant_id: str,
    entity_type: str,
    entity_id: str,
    action: str,
    data: dict[str, Any] | None = None,
    actor: str | None = None,
) -> AuditEvent:
    """Add one event to the caller's transaction; it is chained (seq, hashes) when the transaction
    commits, or earlier by `chain_pending` / `current_head`."""
    event = AuditEvent(
        tenant_id=tenant_id,
        entity_type=entity_type,
        entity_id=str(entity_id),
        action=action,
        # Stored as it was hashed: the JSON round trip turns datetimes, tuples, enums into JSON values.
        data=json.loads(canonical_json(data or {})),
        actor=actor,
    )
    session.info.setdefault(_PENDING_KEY, []).append(event)
    return event


def chain_pending(session: Session) -> None:
    """Chain and add the events recorded in this transaction so far. Tenants are locked in id order, so
    two transactions that touch the same tenants cannot deadlock on their heads."""
    pending: list[AuditEvent] = session.info.pop(_PENDING_KEY, [])
    for tenant_id in sorted({event.tenant_id for event in pending}):
        head = _lock_head(session, tenant_id)
        now = utcnow()
        for event in (event for event in pending if event.tenant_id == tenant_id):
            event.seq, event.prev_hash, event.created_at = head.seq + 1, head.hash, now
            event.hash = event_hash(head.hash, event)
            head.seq, head.hash = event.seq, event.hash
            session.add(event)
    if pending:
        session.flush()


def current_head(session: Session, tenant_id: str) -> tuple[int, str]:
    """The tenant's chain head including this transaction's events (seq, hash), locked until commit."""
    chain_pending(session)
    head = _lock_head(session, tenant_id)
    return head.seq, head.hash


@orm_event.listens_for(Session, "before_commit")
def _chain_before_commit(session: Session) -> None:
    chain_pending(session)


@orm_event.listens_for(Session, "after_rollback")
def _drop_pending_on_rollback(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    checked: int
    broken_at: int | None = None
    reason: str | None = None


def verify_chain(session: Session, tenant_id: str) -> ChainCheck:
    """Walk the tenant's chain in seq order; report the first seq that is missing or does not match."""
    head = session.get(AuditHead, tenant_id)
    expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
    events = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.tenant_id == tenant_id)
        .order_by(AuditEvent.seq)
        .execution_options(yield_per=VERIFY_BATCH)
    )
    for event in events:
        if event.seq != expected_seq:
            return ChainCheck(False, checked, expected_seq, "event missing")
        if event.prev_hash != prev_hash or event_hash(prev_hash, event) != event.hash:
            return ChainCheck(False, checked, event.seq, "event altered")
        prev_hash, expected_seq, checked = event.hash, expected_seq + 1, checked + 1
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    if head_seq != checked or head_hash != prev_hash:
        return ChainCheck(False, checked, checked + 1, "event missing")
    return ChainCheck(True, checked)


def list_filters(
    tenant_id: str,
    entity_type: str | None,
    entity_id: str | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[Any]:
    conditions: list[Any] = [AuditEvent.tenant_id == tenant_id]
    if entity_type:
        conditions.append(AuditEvent.entity_type == entity_type)
    if entity_id:
        conditions.append(AuditEvent.entity_id == entity_id)
    if action:
        conditions.append(AuditEvent.action == action)
    if since:
        conditions.append(AuditEvent.created_at >= since)
    if until:
        conditions.append(AuditEvent.created_at < until)
    return conditions
