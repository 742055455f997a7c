"""The audit trail's one writer (`record`) and its verifier.

Each event's hash is sha256(previous hash + canonical JSON of the event), chained per tenant from
GENESIS_HASH. An event is an AuditEntry, whoever writes it. `record` only queues it on
the session; just before the transaction commits, the queued entries are chained in one go: the
tenant's `audit_heads` row is locked, each entry gets the next seq and its hashes, the head moves once
and the entries go in as rows (`entry_rows`), as a bulk writer's do. The head lock is thus held only
for the commit itself, seq numbers stay gap-free, and the head always names the last event: a changed,
removed or truncated row breaks the chain. A rolled-back transaction leaves no event. Callers pass ids
and counts, never subject identifiers in clear.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

import orjson
import psycopg
from sqlalchemy import String, any_, bindparam, insert, select
from sqlalchemy import event as orm_event
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from app.asyncdb import compiled_sql, json_insert_sql
from app.audit.models import GENESIS_HASH, AuditEvent, AuditHead
from app.db import utcnow

VERIFY_BATCH = 1000
_PENDING_KEY = "lethe.audit.pending"


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, no ASCII escapes: the text every event hash is taken over. orjson writes
    the same bytes as json.dumps for plain JSON values without floats (the hot paths' events) at a
    tenth of the cost; everything else takes json.dumps, the definition."""
    if _is_plain_json(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError:  # an int past 64 bits, a lone surrogate
            pass
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


_JSON_SCALARS = frozenset({str, int, bool, type(None)})


def _is_plain_json(value: Any) -> bool:
    """A tree of dicts with str keys, lists, strings, int, bool and None only. Exact types but for
    strings, whose subclasses (the StrEnum statuses) both libraries print as their text; a float, an
    int subclass or anything else may print otherwise."""
    if type(value) in _JSON_SCALARS or isinstance(value, str):
        return True
    if type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, str) or not (type(item) in _JSON_SCALARS or _is_plain_json(item)):
                return False
        return True
    if type(value) is list:
        return all(type(item) in _JSON_SCALARS or _is_plain_json(item) for item in value)
    return False


class Chainable(Protocol):
    """What chaining reads and writes: an AuditEntry, or an AuditEvent read back to be verified."""

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
    if not data:
        return {}
    if _is_plain_json(data):
        try:
            return orjson.loads(orjson.dumps(data))  # a copy, as the round trip below gives
        except orjson.JSONEncodeError:
            pass
    return json.loads(canonical_json(data))


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


@dataclass
class AuditEntry:
    """One event as it is chained and stored (the columns of AuditEvent, without an ORM object); its
    data is stored as normalized_data makes it."""

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

    def __post_init__(self) -> None:
        self.entity_id = str(self.entity_id)
        self.data = normalized_data(self.data)


def record(
    session: Session,
    tenant_id: str,
    entity_type: str,
    entity_id: str,
    action: str,
    data: dict[str, Any] | None = None,
    actor: str | None = None,
) -> None:
    """Add one event to the caller's transaction; it is chained (seq, hashes) when the transaction
    commits, or earlier by `chain_pending` / `current_head`."""
    queue_entries(session, [AuditEntry(tenant_id, entity_type, entity_id, action, data or {}, actor)])


def queue_entries(session: Session, entries: Iterable[AuditEntry]) -> None:
    """Add events to the caller's transaction, in order; chained as `record`'s are."""
    session.info.setdefault(_PENDING_KEY, []).extend(entries)


def chain_pending(session: Session) -> None:
    """Chain and insert the events recorded in this transaction so far. Tenants are locked in id order,
    so two transactions that touch the same tenants cannot deadlock on their heads."""
    pending: list[AuditEntry] = session.info.pop(_PENDING_KEY, [])
    if not pending:
        return
    for tenant_id in sorted({entry.tenant_id for entry in pending}):
        head = _lock_head(session, tenant_id)
        entries = [entry for entry in pending if entry.tenant_id == tenant_id]
        head.seq, head.hash = chain_onto(head.seq, head.hash, entries, utcnow())
    session.flush()  # the heads move before the entries go in, as in append_entries_sql
    session.execute(insert(AuditEvent.__table__), entry_rows(pending))


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


# --- chaining outside a session (bulk writers on app.asyncdb; Postgres) --------------------------------
# The same chain: a writer chains its entries onto a head it read (`chain_onto`), then appends them
# with append_entries_sql(), which locks each head and moves it only if it still is where the entries
# were chained from. If it is not (another writer appended meanwhile), the statement fails
# (`is_head_moved`) and the whole transaction with it; the writer may then lock the heads first
# (LOCK_HEADS_SQL, after its other rows, in tenant order like chain_pending) and chain again.


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


@lru_cache(maxsize=2)
def append_entries_sql(after_lock: bool = False) -> str:
    """Move the heads and insert the chained entries, in one statement whose parameter is
    {"heads": [{tenant_id, from_seq, from_hash, seq, hash}], "entries": entry_rows(...)}; with
    `after_lock`, a first parameter names an advisory lock (bigint) the statement waits for before it
    touches a head (a writer ordering its own transactions). The heads must exist. A head no longer at
    (from_seq, from_hash) once locked gets a NULL hash, which its NOT NULL constraint refuses: the
    statement fails rather than fork or break the chain."""
    # Built on first use: a foreign-key column's type is known once every model is imported.
    entries = json_insert_sql(AuditEvent.__table__, _ENTRY_COLUMNS, "(SELECT doc FROM appended) -> 'entries'")
    waited = "waited AS MATERIALIZED (SELECT pg_advisory_xact_lock(%s::bigint)), " if after_lock else ""
    return (
        f"WITH {waited}appended AS (SELECT %s::jsonb AS doc), "
        "head AS (SELECT h.* FROM appended, jsonb_to_recordset(appended.doc -> 'heads') "
        "AS h(tenant_id varchar, from_seq bigint, from_hash varchar, seq bigint, hash varchar)), "
        # The heads as they are once locked (a lock waits for, then reads, the latest committed row;
        # joining `waited` takes no lock before the advisory one), in tenant order like chain_pending.
        "locked AS (SELECT audit_heads.tenant_id, audit_heads.seq, audit_heads.hash FROM audit_heads"
        f"{', waited' if after_lock else ''} WHERE audit_heads.tenant_id IN (SELECT tenant_id FROM head) "
        "ORDER BY audit_heads.tenant_id FOR UPDATE OF audit_heads), "
        "moved AS (UPDATE audit_heads SET seq = head.seq, hash = CASE WHEN locked.seq = head.from_seq "
        "AND locked.hash = head.from_hash THEN head.hash END FROM head JOIN locked USING (tenant_id) "
        "WHERE audit_heads.tenant_id = head.tenant_id RETURNING audit_heads.tenant_id) "
        # Reading `moved` makes the heads move before the entries go in, as in chain_pending.
        f"{entries} WHERE incoming.tenant_id IN (SELECT tenant_id FROM moved)"
    )


def appended_heads(
    entries_by_tenant: dict[str, list[AuditEntry]], heads: dict[str, tuple[int, str]], now: datetime
) -> list[dict[str, Any]]:
    """Chain each tenant's entries onto its head (seq, hash); answers the "heads" of append_entries_sql()."""
    moved = []
    for tenant_id, entries in sorted(entries_by_tenant.items()):
        from_seq, from_hash = heads[tenant_id]
        seq, hash_ = chain_onto(from_seq, from_hash, entries, now)
        moved.append(
            {"tenant_id": tenant_id, "from_seq": from_seq, "from_hash": from_hash, "seq": seq, "hash": hash_}
        )
    return moved


def entry_rows(entries: Iterable[AuditEntry]) -> list[dict[str, Any]]:
    """Chained entries as rows of audit_events."""
    return [{column: getattr(entry, column) for column in _ENTRY_COLUMNS} for entry in entries]


def is_head_moved(exc: BaseException) -> bool:
    """Whether append_entries_sql() failed because another writer appended first."""
    orig = getattr(exc, "orig", exc)
    diag = getattr(orig, "diag", None)
    table = getattr(diag, "table_name", None)
    return (isinstance(orig, psycopg.errors.NotNullViolation) and table == "audit_heads") or (
        isinstance(orig, psycopg.errors.UniqueViolation) and table == "audit_events"
    )


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
