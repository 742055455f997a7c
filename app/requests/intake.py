"""Deletion-request intake on Postgres: the requests a process receives at the same time are recorded
together, in one transaction.

Why: every request appends to its tenant's audit chain, whose head row stays locked until the commit,
and a commit waits for its WAL flush (about 5 ms on the disks this runs on). One transaction per request
therefore caps a tenant at a couple of hundred requests a second whatever the CPU, and the ORM path
spends several milliseconds of CPU per request besides. Here, requests that arrive while a batch is
being written wait for the next batch; a batch is one transaction of three round trips on an
app.asyncdb connection: (1) every lookup, (2) every table's rows (one JSON document per table) and the
lock on the audit heads, (3) the chained audit events, the heads, COMMIT.

Guarantees, as on the ORM path (app.requests.service.create_request, used on other databases, with the
same rules: intake_steps, live_models, audit_change, announcement): a 202 is answered only once its
batch has committed; a request refused while resolving (unknown samples or models, a refused callback
URL, an Idempotency-Key conflict or replay) writes nothing and does not affect the others of its batch;
a database failure fails the whole batch (503 for an outage), and nothing of it is stored.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from psycopg import AsyncConnection, AsyncCursor
from sqlalchemy import BigInteger, String, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY

from app import asyncdb
from app.audit.service import (
    CREATE_HEADS_SQL,
    LOCK_HEADS_SQL,
    MOVE_HEADS_SQL,
    AuditEntry,
    chain_onto,
    entry_rows,
    insert_entries_sql,
    normalized_data,
)
from app.db import new_id
from app.errors import ProblemError, unprocessable
from app.idempotency.service import (
    IdempotentReplay,
    StoredKeyRow,
    claim_sql,
    done_key_row,
    in_flight,
    insert_keys_sql,
    judge_reuse,
    stored_keys_sql,
)
from app.outbox.celery_client import PLAN_TASK
from app.outbox.service import committed_work, insert_outbox_sql, outbox_row
from app.provenance.membership import TrainedVersion, trained_versions_query
from app.provenance.models import Sample
from app.registry.models import Model
from app.requests import service, views
from app.requests.deadlines import deadline_for
from app.requests.models import DeletionRequest, DeletionRequestModel, DeletionRequestSample, RequestEvent
from app.requests.schemas import DeletionRequestCreate, DeletionRequestCreated
from app.requests.service import (
    ENTITY_TYPE,
    MODEL_PENDING,
    AffectedModel,
    Intake,
    announcement,
    audit_change,
    intake_steps,
    live_models,
    plan_task_payload,
)
from app.security.auth import Principal
from app.security.subjects import subject_hmac
from app.settings import get_settings
from app.webhooks.events import request_event
from app.webhooks.service import (
    SubscriptionRow,
    active_subscriptions_sql,
    callback_secret,
    checked_url,
    delivery_rows,
    delivery_targets,
    delivery_task,
    event_envelope,
    insert_deliveries_sql,
)

# Requests per transaction: large enough for any burst one process sees, small enough that a batch
# stays a few milliseconds of work.
MAX_BATCH = 256
ACCEPTED = 202


@dataclass
class Submission:
    """One POST waiting for its batch."""

    principal: Principal
    payload: DeletionRequestCreate
    path: str
    key: str | None = None
    digest: str = ""
    future: asyncio.Future[DeletionRequestCreated] = field(init=False)

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id


# --- the lookups of a batch (round trip 1) ----------------------------------------------------------------

_TENANT = bindparam("tenant_id", type_=String)
_HMACS = bindparam("hmacs", type_=ARRAY(String))
_SAMPLE_IDS = bindparam("sample_ids", type_=ARRAY(BigInteger))


@lru_cache(maxsize=1)
def _queries() -> dict[str, str]:
    erased = Sample.erased_at.is_not(None)
    return {
        "subject_samples": asyncdb.compiled_sql(
            select(Sample.subject_hmac, Sample.id, erased).where(
                Sample.tenant_id == _TENANT, Sample.subject_hmac == any_(_HMACS)
            )
        ),
        "listed_samples": asyncdb.compiled_sql(
            select(Sample.id, erased).where(Sample.tenant_id == _TENANT, Sample.id == any_(_SAMPLE_IDS))
        ),
        "trained_on_subjects": asyncdb.compiled_sql(
            trained_versions_query(_TENANT, Sample.subject_hmac == any_(_HMACS))
        ),
        "trained_on_samples": asyncdb.compiled_sql(
            trained_versions_query(_TENANT, Sample.id == any_(_SAMPLE_IDS))
        ),
        "named_models": asyncdb.compiled_sql(
            select(Model.id, Model.name).where(
                Model.tenant_id == _TENANT, Model.name == any_(bindparam("names", type_=ARRAY(String)))
            )
        ),
    }


@dataclass
class TenantLookups:
    """What one round trip found for the submissions of one tenant."""

    samples_of_subject: dict[str, list[tuple[int, bool]]] = field(default_factory=lambda: defaultdict(list))
    listed_samples: dict[int, bool] = field(default_factory=dict)
    hits_by_sample: dict[int, list[TrainedVersion]] = field(default_factory=lambda: defaultdict(list))
    models_by_name: dict[str, str] = field(default_factory=dict)
    subscriptions: list[SubscriptionRow] = field(default_factory=list)
    stored_keys: dict[str, StoredKeyRow] = field(default_factory=dict)
    claimed: dict[str, bool] = field(default_factory=dict)


class PendingLookups:
    """The cursors of the queued lookups, read once the pipeline has synced."""

    def __init__(self) -> None:
        self._readers: list[tuple[AsyncCursor[Any], Any]] = []

    async def queue(self, conn: AsyncConnection[Any], sql: str, params: Any, read: Any) -> None:
        self._readers.append((await conn.execute(sql, params), read))

    async def collect(self) -> None:
        for cursor, read in self._readers:
            read(await cursor.fetchall())


async def _queue_lookups(
    conn: AsyncConnection[Any], tenant_id: str, batch: Sequence[Submission], found: TenantLookups
) -> PendingLookups:
    queries, pending = _queries(), PendingLookups()
    hmacs = sorted({hmac for sub in batch if (hmac := _hmac_of(sub)) is not None})
    sample_ids = sorted({sample_id for sub in batch for sample_id in sub.payload.sample_ids or ()})
    names = sorted({name for sub in batch for name in sub.payload.models or ()})
    keys = sorted({sub.key for sub in batch if sub.key is not None})

    def samples_of_subjects(rows: list[tuple[str, int, bool]]) -> None:
        for hmac, sample_id, erased in rows:
            found.samples_of_subject[hmac].append((sample_id, erased))

    def hits(rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            hit = TrainedVersion(*row)
            found.hits_by_sample[hit.sample_id].append(hit)

    for key in keys:  # claimed before the stored keys are read, as check_key does
        sql, params = claim_sql(tenant_id, key)
        await pending.queue(conn, sql, params, lambda rows, key=key: found.claimed.update({key: rows[0][0]}))
    if keys:
        await pending.queue(
            conn,
            stored_keys_sql(),
            {"tenant_id": tenant_id, "keys": keys},
            lambda rows: found.stored_keys.update({row[0]: StoredKeyRow(*row) for row in rows}),
        )
    if names:
        await pending.queue(
            conn,
            queries["named_models"],
            {"tenant_id": tenant_id, "names": names},
            lambda rows: found.models_by_name.update({name: model_id for model_id, name in rows}),
        )
    if hmacs:
        subjects = {"tenant_id": tenant_id, "hmacs": hmacs}
        await pending.queue(conn, queries["subject_samples"], subjects, samples_of_subjects)
        await pending.queue(conn, queries["trained_on_subjects"], subjects, hits)
    if sample_ids:
        listed = {"tenant_id": tenant_id, "sample_ids": sample_ids}
        await pending.queue(
            conn, queries["listed_samples"], listed, lambda rows: found.listed_samples.update(dict(rows))
        )
        await pending.queue(conn, queries["trained_on_samples"], listed, hits)
    await pending.queue(
        conn,
        active_subscriptions_sql(),
        {"tenant_id": tenant_id},
        lambda rows: found.subscriptions.extend(SubscriptionRow(*row) for row in rows),
    )
    return pending


def _hmac_of(sub: Submission) -> str | None:
    return subject_hmac(sub.payload.subject_id) if sub.payload.subject_id is not None else None


# --- what a batch writes (round trips 2 and 3) -----------------------------------------------------------


@dataclass
class Rows:
    """Every row a batch inserts, per table, in insertion order."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[str, list[AuditEntry]] = field(default_factory=lambda: defaultdict(list))


_REQUEST_COLUMNS = (
    "id", "tenant_id", "subject_hmac", "status", "regime", "method", "requested_models", "callback_url",
    "received_at", "due_at", "updated_at",
)  # fmt: skip


@lru_cache(maxsize=1)
def _inserts() -> list[tuple[str, str]]:
    """(Rows attribute, INSERT statement), parents before children."""
    return [
        ("requests", asyncdb.json_insert_sql(DeletionRequest.__table__, _REQUEST_COLUMNS)),
        ("samples", asyncdb.json_insert_sql(DeletionRequestSample.__table__, ("request_id", "sample_id"))),
        (
            "models",
            asyncdb.json_insert_sql(DeletionRequestModel.__table__, ("request_id", "model_id", "status")),
        ),
        (
            "events",
            asyncdb.json_insert_sql(
                RequestEvent.__table__, ("request_id", "from_status", "to_status", "at", "detail")
            ),
        ),
        ("deliveries", insert_deliveries_sql()),
        ("outbox", insert_outbox_sql()),
        ("keys", insert_keys_sql()),
    ]


def _resolve(sub: Submission, found: TenantLookups) -> tuple[list[tuple[int, bool]], list[AffectedModel]]:
    """The samples and the affected models of one submission; ProblemError for unknown ones (in the
    order the ORM path checks them)."""
    payload = sub.payload
    allowed: set[str] | None = None
    if payload.models is not None:
        wanted = list(dict.fromkeys(payload.models))
        unknown = sorted(name for name in wanted if name not in found.models_by_name)
        if unknown:
            raise unprocessable(f"unknown models: {', '.join(unknown)}", "unknown-models")
        allowed = {found.models_by_name[name] for name in wanted}
    if payload.subject_id is not None:
        samples = found.samples_of_subject.get(subject_hmac(payload.subject_id), [])
    else:
        wanted_ids = sorted(set(payload.sample_ids or ()))
        unknown_ids = [sample_id for sample_id in wanted_ids if sample_id not in found.listed_samples]
        if unknown_ids:
            shown = ", ".join(str(sample_id) for sample_id in unknown_ids[:20])
            more = f" and {len(unknown_ids) - 20} more" if len(unknown_ids) > 20 else ""
            raise unprocessable(f"unknown sample ids: {shown}{more}", "unknown-samples")
        samples = [(sample_id, found.listed_samples[sample_id]) for sample_id in wanted_ids]
    hits = [hit for sample_id, _ in samples for hit in found.hits_by_sample.get(sample_id, ())]
    return samples, live_models(hits, allowed)


def _record(sub: Submission, found: TenantLookups, rows: Rows, now: datetime) -> DeletionRequestCreated:
    """Add the rows of one accepted submission to `rows`; answers its 202 body."""
    payload, tenant_id, actor = sub.payload, sub.tenant_id, sub.principal.actor
    if sub.key is not None:
        if not found.claimed.get(sub.key):
            raise in_flight()
        judge_reuse(found.stored_keys.get(sub.key), sub.digest)
    callback_url = checked_url(payload.callback_url) if payload.callback_url is not None else None
    samples, models = _resolve(sub, found)
    holds_data = bool(models) or any(not erased for _, erased in samples)

    request = DeletionRequest(
        id=new_id(),
        tenant_id=tenant_id,
        subject_hmac=_hmac_of(sub),
        status=None,
        regime=payload.regime,
        method=payload.method,
        requested_models=payload.models,
        callback_url=callback_url,
        received_at=now,
        due_at=deadline_for(payload.regime, now, get_settings()).due_at,
        updated_at=now,
    )
    rows.samples.extend({"request_id": request.id, "sample_id": sample_id} for sample_id, _ in samples)
    rows.models.extend(
        {"request_id": request.id, "model_id": model.id, "status": MODEL_PENDING} for model in models
    )
    timeline = []
    for to_status, detail in intake_steps(holds_data, len(samples), models):
        # What change_status writes for each step: timeline row, webhooks, audit event.
        from_status, request.status = request.status, to_status
        timeline.append(
            RequestEvent(
                request_id=request.id, from_status=from_status, to_status=to_status, at=now, detail=detail
            )
        )
        rows.events.append(
            {
                "request_id": request.id,
                "from_status": from_status,
                "to_status": to_status,
                "at": now,
                "detail": detail,
            }
        )
        event = request_event(to_status)
        if event is not None:
            envelope = event_envelope(
                event, announcement(request, {"previous_status": from_status, **detail})
            )
            targets = delivery_targets(found.subscriptions, event, callback_url)
            deliveries = delivery_rows(tenant_id, event, envelope, targets, request.id, now)
            rows.deliveries.extend(deliveries)
            rows.outbox.extend(outbox_row(*delivery_task(delivery["id"]), now) for delivery in deliveries)
        action, data = audit_change(from_status, to_status, detail)
        rows.audit[tenant_id].append(
            AuditEntry(tenant_id, ENTITY_TYPE, request.id, action, normalized_data(data), actor)
        )
    if holds_data:
        rows.outbox.append(outbox_row(PLAN_TASK, plan_task_payload(request), now))
    rows.requests.append({column: getattr(request, column) for column in _REQUEST_COLUMNS})

    secret = callback_secret(request.id) if callback_url else None
    answer = views.created(Intake(request, len(samples), models, timeline), secret)
    if sub.key is not None:
        body = answer.model_dump(mode="json")
        rows.keys.append(done_key_row(tenant_id, sub.key, "POST", sub.path, sub.digest, ACCEPTED, body, now))
    return answer


def _json(rows: Any) -> str:
    return orjson.dumps(rows).decode()


async def _lock_heads(conn: AsyncConnection[Any], tenant_ids: list[str]) -> dict[str, tuple[int, str]]:
    cursor = await conn.execute(LOCK_HEADS_SQL, {"tenant_ids": tenant_ids})
    return {tenant_id: (seq, hash_) for tenant_id, seq, hash_ in await cursor.fetchall()}


async def _write(conn: AsyncConnection[Any], rows: Rows, now: datetime) -> None:
    """Round trips 2 and 3: the rows, then the chained audit events and the heads (COMMIT follows)."""
    for name, sql in _inserts():
        table_rows = getattr(rows, name)
        if table_rows:
            await conn.execute(sql, (_json(table_rows),))
    tenant_ids = sorted(rows.audit)  # locked in tenant order, like chain_pending
    heads = await _lock_heads(conn, tenant_ids)
    if len(heads) < len(tenant_ids):
        await conn.execute(CREATE_HEADS_SQL, {"tenant_ids": [t for t in tenant_ids if t not in heads]})
        heads = await _lock_heads(conn, tenant_ids)
    moved, entries = [], []
    for tenant_id in tenant_ids:
        seq, hash_ = chain_onto(*heads[tenant_id], rows.audit[tenant_id], now)
        moved.append({"tenant_id": tenant_id, "seq": seq, "hash": hash_})
        entries.extend(rows.audit[tenant_id])
    await conn.execute(insert_entries_sql(), (_json(entry_rows(entries)),))
    await conn.execute(MOVE_HEADS_SQL, (_json(moved),))


async def write_batch(pool: asyncdb.AsyncPool, batch: Sequence[Submission]) -> None:
    """Record `batch` in one transaction and settle each submission's future (its answer, or the
    problem that refused it); raises when the transaction fails (nothing of the batch is stored)."""
    by_tenant: dict[str, list[Submission]] = defaultdict(list)
    for sub in batch:
        by_tenant[sub.tenant_id].append(sub)
    outcomes: list[tuple[Submission, DeletionRequestCreated | Exception]] = []
    rows = Rows()
    async with pool.connection() as conn, conn.pipeline() as pipeline, conn.transaction():
        lookups = {tenant_id: TenantLookups() for tenant_id in by_tenant}
        pending = [await _queue_lookups(conn, t, subs, lookups[t]) for t, subs in by_tenant.items()]
        await pipeline.sync()
        for reads in pending:
            await reads.collect()
        now = service.utcnow()  # the requests domain's clock, as on the ORM path
        for sub in batch:
            try:
                outcomes.append((sub, _record(sub, lookups[sub.tenant_id], rows, now)))
            except (ProblemError, IdempotentReplay) as refusal:
                outcomes.append((sub, refusal))
        if rows.requests:
            await _write(conn, rows, now)
    if rows.outbox:
        committed_work.set()
    for sub, outcome in outcomes:
        if sub.future.done():  # its client went away; the request stands
            continue
        if isinstance(outcome, Exception):
            sub.future.set_exception(outcome)
        else:
            sub.future.set_result(outcome)


# --- batching ---------------------------------------------------------------------------------------------


class IntakeBatcher:
    """One per event loop: submissions queue while a batch is written, and form the next batch."""

    def __init__(self, pool: asyncdb.AsyncPool) -> None:
        self.pool = pool
        self.waiting: list[Submission] = []
        self.keys_in_flight: set[tuple[str, str]] = set()
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, sub: Submission) -> DeletionRequestCreated:
        loop = asyncio.get_running_loop()
        claim = (sub.tenant_id, sub.key) if sub.key is not None else None
        if claim is not None:
            # A second request with a key this process is still writing: 409 at once (it could only
            # wait for the batch that holds the key).
            if claim in self.keys_in_flight:
                raise in_flight()
            self.keys_in_flight.add(claim)
        sub.future = loop.create_future()
        self.waiting.append(sub)
        if self._writer is None:
            self._writer = loop.create_task(self._write_all())
        try:
            return await sub.future
        finally:
            if claim is not None:
                self.keys_in_flight.discard(claim)

    async def _write_all(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
                try:
                    await write_batch(self.pool, batch)
                except Exception as exc:
                    for sub in batch:
                        if not sub.future.done():
                            sub.future.set_exception(exc)
        finally:
            self._writer = None


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, IntakeBatcher]] = (
    weakref.WeakKeyDictionary()
)


def batcher() -> IntakeBatcher | None:
    """The running loop's batcher for the configured database; None when it is not Postgres (the ORM
    path records the request then)."""
    pool = asyncdb.pool()
    if pool is None:
        return None
    batchers = _batchers.setdefault(asyncio.get_running_loop(), {})
    found = batchers.get(id(pool))
    if found is None or found.pool is not pool:
        found = batchers[id(pool)] = IntakeBatcher(pool)
    return found
