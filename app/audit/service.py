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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import String, any_, bindparam, select
from sqlalchemy import event as orm_event
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from app.asyncdb import compiled_sql, json_insert_sql
from app.audit.models import GENESIS_HASH, AuditEvent, AuditHead
from app.db import utcnow

VERIFY_BATCH = 1000
_PENDING_KEY = "lethe.audit.pending"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class Chainable(Protocol):
    """What chaining reads and writes: an AuditEvent, or an AuditEntry of a bulk writer."""

    tenant_id: str
    seq: int
    entity_type: str
    entity_id: str
    action: str
    data: dict[str, Any]
    actor: str | None
    created_at: datetime
    prev_hash: str
    hash: str


def normalized_data(data: dict[str, Any] | None) -> dict[str, Any]:
    """Event data as it is stored and hashed: the JSON round trip turns datetimes, tuples and enums
    into JSON values, so the stored row hashes the same when it is read back."""
    return json.loads(canonical_json(data or {}))


def event_hash(prev_hash: str, event: Chainable) -> str:
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
        data=normalized_data(data),
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
        events = [event for event in pending if event.tenant_id == tenant_id]
        head.seq, head.hash = chain_onto(head.seq, head.hash, events, utcnow())
        session.add_all(events)
    if pending:
        session.flush()


def chain_onto(seq: int, prev_hash: str, events: Iterable[Chainable], now: datetime) -> tuple[int, str]:
    """Give `events` (one tenant's, in order) the seq numbers and hashes that follow a head at
    (seq, prev_hash); answers the new head."""
    for event in events:
        event.seq, event.prev_hash, event.created_at = seq + 1, prev_hash, now
        event.hash = event_hash(prev_hash, event)
        seq, prev_hash = event.seq, event.hash
    return seq, prev_hash


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


# --- chaining outside the ORM (bulk writers on app.asyncdb; Postgres) ----------------------------------
# Same chain, same lock: a writer locks the heads of its tenants (in tenant order, like chain_pending)
# after its other rows, chains its entries with `chain_onto`, inserts them and moves the heads.


@dataclass
class AuditEntry:
    """An event of a bulk writer (the fields of AuditEvent, without the ORM's per-object cost)."""

    tenant_id: str
    entity_type: str
    entity_id: str
    action: str
    data: dict[str, Any]
    actor: str | None
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""
    created_at: datetime = field(default_factory=utcnow)  # set again when chained


_ENTRY_COLUMNS = (
    "tenant_id", "seq", "entity_type", "entity_id", "action", "data", "actor", "created_at", "prev_hash",
    "hash",
)  # fmt: skip
_TENANT_IDS = bindparam("tenant_ids", type_=ARRAY(String))
LOCK_HEADS_SQL = compiled_sql(
    select(AuditHead.tenant_id, AuditHead.seq, AuditHead.hash)
    .where(AuditHead.tenant_id == any_(_TENANT_IDS))
    .order_by(AuditHead.tenant_id)
    .with_for_update()
)
# Tenants made by create_tenant have a head; this covers rows made otherwise (as _lock_head does).
CREATE_HEADS_SQL = (
    "INSERT INTO audit_heads (tenant_id, seq, hash) "
    f"SELECT unnest(%(tenant_ids)s::varchar[]), 0, '{GENESIS_HASH}' ON CONFLICT (tenant_id) DO NOTHING"
)
MOVE_HEADS_SQL = (
    "UPDATE audit_heads SET seq = moved.seq, hash = moved.hash "
    "FROM jsonb_to_recordset(%s::jsonb) AS moved(tenant_id varchar, seq bigint, hash varchar) "
    "WHERE audit_heads.tenant_id = moved.tenant_id"
)


@lru_cache(maxsize=1)
def insert_entries_sql() -> str:
    # Built on first use: a foreign-key column's type is known once every model is imported.
    return json_insert_sql(AuditEvent.__table__, _ENTRY_COLUMNS)


def entry_rows(entries: Sequence[AuditEntry]) -> list[dict[str, Any]]:
    """Chained entries as rows for insert_entries_sql()."""
    return [{column: getattr(entry, column) for column in _ENTRY_COLUMNS} for entry in entries]


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
