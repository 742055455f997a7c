"""Deletion-request intake: one decision (what a request resolves to and what it writes), two executors.

The decision: `_record` turns a submission and the lookups of its tenant (TenantLookups: the samples,
the versions trained on them, the named models, the webhook subscriptions, the Idempotency-Key's
earlier use) into rows (Rows): the request, its samples and models, and through the life cycle
(app.requests.lifecycle.status_change) the timeline, webhooks and audit entries of its first changes.
Both executors fill the same lookups from the same queries (`_lookup_queries`) and write the same rows.

On Postgres the requests a process receives at the same time are recorded together, one transaction per
batch. Why: every request appends to its tenant's audit chain, whose head row stays locked until the
commit, and a commit waits for its WAL flush (about 5 ms on the disks this runs on). One transaction per
request therefore caps a tenant at a couple of hundred requests a second whatever the CPU, and a session
spends several milliseconds of CPU per request besides.

How: requests that arrive while MAX_WRITERS batches are in flight form the next batch. A batch is one
transaction on an app.asyncdb connection, in two round trips: (1) one lookup statement per tenant
(the lookups, and the audit head); (2) every row in one statement (one JSON document), the audit
entries chained onto the head and appended by app.audit.service.append_entries_sql, and COMMIT. The
batches of a process commit in the order they chained: each waits, in the database, for the advisory
lock its predecessor holds until it ends, so the next batch's work overlaps the previous one's commit.
If another writer (a worker, another process) moved a head meanwhile, the append fails and the batch is
written again with the heads locked first (three round trips), which cannot fail that way.

On other databases (the embedded SQLite demo) `record_on_session` records one request in a session's
transaction: the lookups one query each, the rows inserted through SQLAlchemy Core, the audit entries
chained at commit as every session's are.

Guarantees, on both: a 202 is answered only once its transaction has committed; a request refused while
resolving (unknown samples or models, a refused callback URL, an Idempotency-Key conflict or replay)
writes nothing and does not affect the others of its batch; a database failure fails the whole batch
(503 for an outage), and nothing of it is stored.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import BigInteger, ColumnElement, Select, String, Table, any_, bindparam, insert, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app import asyncdb
from app.audit.service import (
    CREATE_HEADS_SQL,
    LOCK_HEADS_SQL,
    AuditEntry,
    append_entries_sql,
    appended_heads,
    entry_rows,
    is_head_moved,
    queue_entries,
)
from app.db import new_id, utcnow
from app.errors import ProblemError, unprocessable
from app.idempotency.models import IdempotencyKey
from app.idempotency.service import (
    KEY_COLUMNS,
    IdempotentReplay,
    StoredKeyRow,
    claim_key,
    claims_sql,
    done_key_row,
    in_flight,
    judge_reuse,
    stored_keys_query,
)
from app.outbox.celery_client import PLAN_TASK
from app.outbox.models import OutboxMessage
from app.outbox.service import OUTBOX_COLUMNS, committed_work, enqueue_rows, outbox_row
from app.provenance.membership import TrainedVersion, trained_versions_query
from app.provenance.models import Sample
from app.registry.models import Model, VersionStatus
from app.requests import views
from app.requests.deadlines import deadline_for
from app.requests.lifecycle import (
    RequestSnapshot,
    RequestState,
    StatusChange,
    TimelineStep,
    plan_task_payload,
    status_change,
)
from app.requests.models import (
    DeletionRequest,
    DeletionRequestModel,
    DeletionRequestSample,
    ModelStatus,
    RequestEvent,
    RequestStatus,
)
from app.requests.schemas import DeletionRequestCreate, DeletionRequestCreated
from app.security.auth import Principal
from app.security.subjects import subject_hmac
from app.settings import get_settings
from app.webhooks.models import WebhookDelivery
from app.webhooks.service import (
    DELIVERY_COLUMNS,
    SubscriptionRow,
    callback_secret,
    checked_url,
    delivery_tasks,
    subscriptions_query,
)

# Requests per transaction: large enough for any burst one process sees, small enough that a batch
# stays a few milliseconds of work.
MAX_BATCH = 256
# Batches in flight per process: one committing, the next waiting for it with its rows ready.
MAX_WRITERS = 2
ACCEPTED = 202


# Versions that can never serve do not hold data in the sense of a deletion (tainted ones neither).
DEAD_VERSION_STATUSES = (VersionStatus.REJECTED, VersionStatus.FAILED)


@dataclass
class Submission:
    """One POST to record: who, what, and its Idempotency-Key (with the request's path and digest)."""

    principal: Principal
    payload: DeletionRequestCreate
    path: str = ""
    key: str | None = None
    digest: str = ""
    future: asyncio.Future[DeletionRequestCreated] = field(init=False)  # its answer, when batched
    subject_hmac: str | None = field(init=False)

    def __post_init__(self) -> None:
        subject_id = self.payload.subject_id
        self.subject_hmac = subject_hmac(subject_id) if subject_id is not None else None

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id


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


# --- the lookups: what a tenant's submissions resolve to ------------------------------------------------

# How a query matches a column to the values named (hmacs, sample_ids, names, keys) of the submissions.
Match = Callable[[Any, str], ColumnElement[bool]]


def _lookup_queries(tenant_id: Any, match: Match) -> list[Select[Any]]:
    """The lookups of one tenant, in TenantLookups.read's order: subjects' samples, listed samples, the
    versions trained on either, the named models, the active subscriptions, the keys' earlier uses."""
    erased = Sample.erased_at.is_not(None)
    subjects, listed = match(Sample.subject_hmac, "hmacs"), match(Sample.id, "sample_ids")
    return [
        select(Sample.subject_hmac, Sample.id, erased).where(Sample.tenant_id == tenant_id, subjects),
        select(Sample.id, erased).where(Sample.tenant_id == tenant_id, listed),
        trained_versions_query(tenant_id, match(Sample.subject_hmac, "hmacs")),
        trained_versions_query(tenant_id, match(Sample.id, "sample_ids")),
        select(Model.id, Model.name).where(Model.tenant_id == tenant_id, match(Model.name, "names")),
        subscriptions_query(tenant_id),
        stored_keys_query(tenant_id, match(IdempotencyKey.key, "keys")),
    ]


def _lookup_values(subs: Iterable[Submission]) -> dict[str, list[Any]]:
    """The values the lookups of these submissions (one tenant's) match, by name."""
    subs = list(subs)
    return {
        "hmacs": sorted({sub.subject_hmac for sub in subs if sub.subject_hmac is not None}),
        "sample_ids": sorted({sample_id for sub in subs for sample_id in sub.payload.sample_ids or ()}),
        "names": sorted({name for sub in subs for name in sub.payload.models or ()}),
        "keys": sorted({sub.key for sub in subs if sub.key is not None}),
    }


@dataclass
class TenantLookups:
    """What the lookups found for the submissions of one tenant."""

    samples_of_subject: dict[str, list[tuple[int, bool]]] = field(default_factory=lambda: defaultdict(list))
    listed_samples: dict[int, bool] = field(default_factory=dict)
    hits_by_sample: dict[int, list[TrainedVersion]] = field(default_factory=lambda: defaultdict(list))
    models_by_name: dict[str, str] = field(default_factory=dict)
    subscriptions: list[SubscriptionRow] = field(default_factory=list)
    stored_keys: dict[str, StoredKeyRow] = field(default_factory=dict)
    claimed: dict[str, bool] = field(default_factory=dict)
    head: tuple[int, str] | None = None

    def read(self, parts: Sequence[Any], head: Sequence[Any] | None = None) -> None:
        """The rows of each of _lookup_queries, in order; the audit head ([seq, hash]) when read."""
        subject_samples, listed, by_subject, by_sample, models, subscriptions, keys = parts
        for hmac, sample_id, erased in subject_samples:
            self.samples_of_subject[hmac].append((sample_id, erased))
        self.listed_samples.update((sample_id, erased) for sample_id, erased in listed)
        for hit in (TrainedVersion(*values) for values in (*by_subject, *by_sample)):
            self.hits_by_sample[hit.sample_id].append(hit)
        self.models_by_name.update((name, model_id) for model_id, name in models)
        self.subscriptions.extend(SubscriptionRow(*values) for values in subscriptions)
        self.stored_keys.update((values[0], StoredKeyRow(*values)) for values in keys)
        self.head = (head[0], head[1]) if head else None


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


def _resolve(sub: Submission, found: TenantLookups) -> tuple[list[tuple[int, bool]], list[AffectedModel]]:
    """The samples and the affected models of one submission; 422 for unknown models, then for unknown
    samples."""
    payload = sub.payload
    allowed: set[str] | None = None
    if payload.models is not None:
        wanted = list(dict.fromkeys(payload.models))
        unknown = sorted(name for name in wanted if name not in found.models_by_name)
        if unknown:
            raise unprocessable(f"unknown models: {', '.join(unknown)}", "unknown-models")
        allowed = {found.models_by_name[name] for name in wanted}
    if sub.subject_hmac is not None:
        samples = found.samples_of_subject.get(sub.subject_hmac, [])
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


# --- what a request writes ------------------------------------------------------------------------------


@dataclass
class Rows:
    """Every row a batch inserts, per table, in insertion order; the audit entries per tenant."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[str, list[AuditEntry]] = field(default_factory=lambda: defaultdict(list))
    planned: list[str] = field(default_factory=list)  # the requests of the batch's one planning task

    def add_change(self, change: StatusChange, now: datetime) -> None:
        self.events.append(change.event_row())
        if change.deliveries:
            self.deliveries.extend(change.deliveries)
            self.outbox.extend(delivery_tasks(change.deliveries, now))
        self.audit[change.audit.tenant_id].append(change.audit)

    def add_planning(self, now: datetime) -> None:
        """The one planning task of the requests recorded (see MERGEABLE_TASKS)."""
        if self.planned:
            self.outbox.append(outbox_row(PLAN_TASK, plan_task_payload(self.planned), now))


_REQUEST_COLUMNS = (
    "id", "tenant_id", "subject_hmac", "status", "regime", "method", "requested_models", "callback_url",
    "received_at", "due_at", "updated_at",
)  # fmt: skip


def _tables() -> dict[str, tuple[Table, Sequence[str]]]:
    """The table and columns of each Rows list, parents first."""
    return {
        "requests": (DeletionRequest.__table__, _REQUEST_COLUMNS),
        "samples": (DeletionRequestSample.__table__, ("request_id", "sample_id")),
        "models": (DeletionRequestModel.__table__, ("request_id", "model_id", "status")),
        "events": (RequestEvent.__table__, ("request_id", "from_status", "to_status", "at", "detail")),
        "deliveries": (WebhookDelivery.__table__, DELIVERY_COLUMNS),
        "outbox": (OutboxMessage.__table__, OUTBOX_COLUMNS),
        "keys": (IdempotencyKey.__table__, KEY_COLUMNS),
    }


def _record(
    sub: Submission, found: TenantLookups, rows: Rows, now: datetime
) -> tuple[Intake, DeletionRequestCreated]:
    """Add the rows of one accepted submission to `rows`; answers the request and its 202 body. Raises
    the ProblemError (or IdempotentReplay) that answers a refused one, which adds nothing."""
    payload, tenant_id, actor = sub.payload, sub.tenant_id, sub.principal.actor
    if sub.key is not None:
        if not found.claimed.get(sub.key):
            raise in_flight()
        judge_reuse(found.stored_keys.get(sub.key), sub.digest)
    callback_url = checked_url(payload.callback_url) if payload.callback_url is not None else None
    samples, models = _resolve(sub, found)
    holds_data = bool(models) or any(not erased for _, erased in samples)

    request = RequestSnapshot(
        id=new_id(),
        tenant_id=tenant_id,
        subject_hmac=sub.subject_hmac,
        regime=payload.regime,
        method=payload.method,
        requested_models=payload.models,
        callback_url=callback_url,
        received_at=now,
        due_at=_due_at(payload.regime, now),
        updated_at=now,
    )
    rows.samples.extend({"request_id": request.id, "sample_id": sample_id} for sample_id, _ in samples)
    rows.models.extend(
        {"request_id": request.id, "model_id": model.id, "status": ModelStatus.PENDING} for model in models
    )
    timeline = []
    for to_status, detail in intake_steps(holds_data, len(samples), models):
        change = status_change(
            request, to_status, actor=actor, detail=detail, subscriptions=lambda: found.subscriptions, now=now
        )
        assert change is not None  # every step moves the new request on
        timeline.append(change.timeline)
        rows.add_change(change, now)
    if holds_data:
        rows.planned.append(request.id)
    rows.requests.append({column: getattr(request, column) for column in _REQUEST_COLUMNS})

    intake = Intake(request, len(samples), models, timeline)
    answer = views.created(intake, callback_secret(request.id) if callback_url else None)
    if sub.key is not None:
        body = answer.model_dump(mode="json")
        rows.keys.append(done_key_row(tenant_id, sub.key, "POST", sub.path, sub.digest, ACCEPTED, body, now))
    return intake, answer


# --- one request in a session (databases other than Postgres) -------------------------------------------


def record_on_session(session: Session, sub: Submission) -> tuple[Intake, DeletionRequestCreated]:
    """Record one submission in the session's transaction (no commit): its lookups one query each, its
    rows through SQLAlchemy Core, its audit entries chained at commit. Raises as _record does, and then
    nothing is written."""
    found = TenantLookups()
    if sub.key is not None:  # claimed before its earlier use is read, as check_key does
        found.claimed[sub.key] = claim_key(session, sub.tenant_id, sub.key)
    values = _lookup_values([sub])
    queries = _lookup_queries(sub.tenant_id, lambda column, name: column.in_(values[name]))
    found.read([session.execute(query).all() for query in queries])
    now = utcnow()
    rows = Rows()
    recorded = _record(sub, found, rows, now)
    rows.add_planning(now)
    for name, (table, _columns) in _tables().items():
        if name != "outbox" and getattr(rows, name):
            session.execute(insert(table), getattr(rows, name))
    enqueue_rows(session, rows.outbox)
    queue_entries(session, [entry for entries in rows.audit.values() for entry in entries])
    return recorded


def create_request(session: Session, principal: Principal, payload: DeletionRequestCreate) -> Intake:
    """Record a request in the session's transaction (no commit), without an Idempotency-Key."""
    return record_on_session(session, Submission(principal, payload))[0]


# --- round trip 1 of a batch: the lookups of each tenant, one statement ----------------------------------

_TENANT = bindparam("tenant_id", type_=String)
_ARRAYS = {
    "hmacs": bindparam("hmacs", type_=ARRAY(String)),
    "sample_ids": bindparam("sample_ids", type_=ARRAY(BigInteger)),
    "names": bindparam("names", type_=ARRAY(String)),
    "keys": bindparam("keys", type_=ARRAY(String)),
}


@lru_cache(maxsize=2)
def _lookup_sql(taking_token: bool) -> str:
    """One statement, one row: each lookup a JSON array, then the audit head ([seq, hash] or null).
    Parameters: tenant_id and the lists of _lookup_values (empty for what the batch does not name);
    when `taking_token`, also `token`: the advisory lock the batch holds until it ends (first column)."""
    queries = _lookup_queries(_TENANT, lambda column, name: column == any_(_ARRAYS[name]))
    subqueries = [
        asyncdb.json_rows_sql(asyncdb.compiled_sql(query), len(query.selected_columns)) for query in queries
    ]
    subqueries.append("(SELECT json_build_array(seq, hash) FROM audit_heads WHERE tenant_id = %(tenant_id)s)")
    if taking_token:
        subqueries.insert(0, "pg_advisory_xact_lock(%(token)s::bigint)")
    return "SELECT " + ", ".join(subqueries)


class Lookups:
    """The lookups of a batch: added to the script of round trip 1, read when it has run."""

    def __init__(self, batch: Sequence[Submission]) -> None:
        self.by_tenant: dict[str, list[Submission]] = defaultdict(list)
        for sub in batch:
            self.by_tenant[sub.tenant_id].append(sub)
        self.found = {tenant_id: TenantLookups() for tenant_id in self.by_tenant}

    def add_to(self, script: asyncdb.Script, token: int | None = None) -> None:
        """With `token`, the first lookup also takes that advisory lock."""
        for tenant_id, subs in self.by_tenant.items():
            found = self.found[tenant_id]
            params: dict[str, Any] = {"tenant_id": tenant_id, **_lookup_values(subs)}
            if params["keys"]:  # claimed before the stored keys are read, as check_key does
                script.add(*claims_sql(tenant_id, params["keys"]), read=_claims_reader(found, params["keys"]))
            if token is not None:
                params["token"] = token
            script.add(_lookup_sql(token is not None), params, _lookup_reader(found, skip=token is not None))
            token = None


def _claims_reader(found: TenantLookups, keys: list[str]) -> Callable[[list[Any]], None]:
    """Reads the claims statement's one row: a boolean per key."""

    def read(rows: list[Any]) -> None:
        found.claimed.update(zip(keys, rows[0][0], strict=True))

    return read


def _lookup_reader(found: TenantLookups, *, skip: bool) -> Callable[[list[Any]], None]:
    """Reads the lookup statement's one row; `skip`: its first column is the token's (see _lookup_sql)."""

    def read(rows: list[Any]) -> None:
        row = rows[0][1:] if skip else rows[0]
        found.read(row[:-1], row[-1])

    return read


# --- what a batch writes ----------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _insert_sql(names: tuple[str, ...]) -> str:
    """The one statement inserting the non-empty lists `names` of a Rows."""
    tables = _tables()
    return asyncdb.json_inserts_sql([(name, *tables[name]) for name in names])


@lru_cache(maxsize=8)
def _due_at(regime: str, received_at: datetime) -> datetime:
    """A batch's requests share their receipt time, hence their deadline per regime."""
    return deadline_for(regime, received_at, get_settings()).due_at


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _add_rows(script: asyncdb.Script, rows: Rows) -> None:
    names = tuple(name for name in _tables() if getattr(rows, name))
    script.add(_insert_sql(names), (_json({name: getattr(rows, name) for name in names}),))


def _add_append(
    script: asyncdb.Script,
    rows: Rows,
    heads: dict[str, tuple[int, str]],
    now: datetime,
    after_lock: int | None = None,
) -> list[dict[str, Any]]:
    """Chain the audit entries and add their append; with `after_lock`, the heads move once that
    advisory lock (the previous batch's) is free. Answers the heads as they will be."""
    moved = appended_heads(rows.audit, heads, now)
    entries = entry_rows(entry for tenant_entries in rows.audit.values() for entry in tenant_entries)
    document = _json({"heads": moved, "entries": entries})
    if after_lock is None:
        script.add(append_entries_sql(), (document,))
    else:
        script.add(append_entries_sql(after_lock=True), (after_lock, document))
    return moved


def _add_head_locks(script: asyncdb.Script, tenant_ids: list[str], heads: dict[str, tuple[int, str]]) -> None:
    """Lock the heads (made first where missing) and read them into `heads` when the script runs."""
    script.add(CREATE_HEADS_SQL, {"tenant_ids": tenant_ids})
    script.add(
        LOCK_HEADS_SQL,
        {"tenant_ids": tenant_ids},
        lambda found: heads.update((t, (q, h)) for t, q, h in found),
    )


def _settle(outcomes: Iterable[tuple[Submission, DeletionRequestCreated | Exception]]) -> None:
    for sub, outcome in outcomes:
        if sub.future.done():  # its client went away; the request stands
            continue
        if isinstance(outcome, Exception):
            sub.future.set_exception(outcome)
        else:
            sub.future.set_result(outcome)


# --- batching ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Ticket:
    """A batch's place in its process's order of commits. Its transaction holds the advisory lock
    `token` from round trip 1 to its end; the next batch waits for that lock before appending."""

    token: int
    previous: Ticket | None
    chained: asyncio.Event = field(default_factory=asyncio.Event)  # its entries are chained, or it gave up
    ended: bool = False

    def end(self) -> None:
        self.ended = True
        self.chained.set()
        self.previous = None  # nothing needs the chain of tickets behind an ended one


class IntakeBatcher:
    """One per event loop and database: forms the batches and writes them."""

    def __init__(self, pool: asyncdb.AsyncPool) -> None:
        self.pool = pool
        self.waiting: list[Submission] = []
        self.keys_in_flight: set[tuple[str, str]] = set()
        # The head each tenant will have once the batches written so far commit (seq, hash).
        self.tails: dict[str, tuple[int, str]] = {}
        self._last: Ticket | None = None
        self._writers = asyncio.Semaphore(MAX_WRITERS)
        self._dispatcher: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

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
        if self._dispatcher is None:
            self._dispatcher = loop.create_task(self._dispatch())
        try:
            return await sub.future
        finally:
            if claim is not None:
                self.keys_in_flight.discard(claim)

    async def _dispatch(self) -> None:
        """Start a batch of everything waiting whenever a writer is free."""
        try:
            while self.waiting:
                await self._writers.acquire()
                batch, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
                self._last = ticket = Ticket(secrets.randbits(63), self._last)
                task = asyncio.get_running_loop().create_task(self._write(batch, ticket))
                self._batches.add(task)  # a reference, so the task is not collected while it runs
                task.add_done_callback(self._batches.discard)
        finally:
            self._dispatcher = None

    async def _write(self, batch: list[Submission], ticket: Ticket) -> None:
        outcomes: list[tuple[Submission, DeletionRequestCreated | Exception]]
        try:
            try:
                outcomes = await self._write_in_order(batch, ticket)
            except DBAPIError as exc:
                if not is_head_moved(exc):
                    raise
                outcomes = await self._write_locked(batch)
        except Exception as exc:
            outcomes = [(sub, exc) for sub in batch]
        finally:
            self._writers.release()
        if any(not isinstance(outcome, Exception) for _, outcome in outcomes):
            committed_work.set()  # the outbox dispatcher sends the batch's tasks now
        _settle(outcomes)

    def _expected_heads(self, lookups: Lookups) -> dict[str, tuple[int, str]] | None:
        """The head of each tenant once the batches before this one commit: this process's own tail,
        or what round trip 1 read when that is newer (another writer appended). None when a tenant has
        no head row yet (the locked path creates it)."""
        heads = {}
        for tenant_id, found in lookups.found.items():
            candidates = [head for head in (self.tails.get(tenant_id), found.head) if head is not None]
            if not candidates:
                return None
            heads[tenant_id] = max(candidates)
        return heads

    async def _write_in_order(
        self, batch: Sequence[Submission], ticket: Ticket
    ) -> list[tuple[Submission, DeletionRequestCreated | Exception]]:
        """Write `batch` chained onto the tails of the batches before it, in two round trips; raises a
        head-moved error (is_head_moved) when another writer appended meanwhile, and then nothing is
        stored."""
        lookups, rows = Lookups(batch), Rows()
        chained: list[str] = []
        try:
            async with self.pool.connection() as conn:
                try:
                    first = asyncdb.Script(conn)
                    first.add("BEGIN")
                    lookups.add_to(first, ticket.token)
                    await first.run()
                    now = utcnow()
                    outcomes = _outcomes(batch, lookups, rows, now)
                    second = asyncdb.Script(conn)
                    if rows.requests:
                        previous = ticket.previous
                        if previous is not None:
                            await previous.chained.wait()
                        heads = self._expected_heads(lookups)
                        if heads is None:
                            raise _NoHead
                        _add_rows(second, rows)
                        # The heads move once the previous batch has committed or rolled back (the
                        # database waits for its lock): only the append and the commit are serialized.
                        after = previous.token if previous is not None and not previous.ended else None
                        for head in _add_append(second, rows, heads, now, after):
                            self.tails[head["tenant_id"]] = (head["seq"], head["hash"])
                            chained.append(head["tenant_id"])
                    ticket.chained.set()
                    second.add("COMMIT")
                    await second.run()
                except BaseException:
                    await asyncdb.end_transaction(conn)
                    raise
            return outcomes
        except _NoHead:
            return await self._write_locked(batch)
        except BaseException:
            for tenant_id in chained:  # those tails will not be: later batches chained on them fail too
                self.tails.pop(tenant_id, None)
            raise
        finally:
            ticket.end()

    async def _write_locked(
        self, batch: Sequence[Submission]
    ) -> list[tuple[Submission, DeletionRequestCreated | Exception]]:
        """Write `batch` with the heads locked before chaining (three round trips; cannot lose a race)."""
        lookups, rows = Lookups(batch), Rows()
        async with self.pool.connection() as conn:
            try:
                first = asyncdb.Script(conn)
                first.add("BEGIN")
                lookups.add_to(first)
                await first.run()
                now = utcnow()
                outcomes = _outcomes(batch, lookups, rows, now)
                last = asyncdb.Script(conn)
                if rows.requests:
                    heads: dict[str, tuple[int, str]] = {}
                    second = asyncdb.Script(conn)
                    _add_rows(second, rows)
                    # Locked after the rows are in (their foreign-key checks come first), in tenant
                    # order: the lock order of chain_pending.
                    _add_head_locks(second, sorted(rows.audit), heads)
                    await second.run()
                    for head in _add_append(last, rows, heads, now):
                        tail = (head["seq"], head["hash"])
                        self.tails[head["tenant_id"]] = max(tail, self.tails.get(head["tenant_id"], tail))
                last.add("COMMIT")
                await last.run()
            except BaseException:
                await asyncdb.end_transaction(conn)
                raise
        return outcomes


class _NoHead(Exception):
    """A tenant of the batch has no audit head row yet."""


def _outcomes(
    batch: Sequence[Submission], lookups: Lookups, rows: Rows, now: datetime
) -> list[tuple[Submission, DeletionRequestCreated | Exception]]:
    outcomes: list[tuple[Submission, DeletionRequestCreated | Exception]] = []
    for sub in batch:
        try:
            outcomes.append((sub, _record(sub, lookups.found[sub.tenant_id], rows, now)[1]))
        except (ProblemError, IdempotentReplay) as refusal:
            outcomes.append((sub, refusal))
    rows.add_planning(now)
    return outcomes


def batcher() -> IntakeBatcher | None:
    """The running loop's batcher for the configured database; None when it is not Postgres (the ORM
    path records the request then)."""
    pool = asyncdb.pool()
    if pool is None:
        return None
    found = pool.state.get("intake")
    if found is None:
        found = pool.state["intake"] = IntakeBatcher(pool)
    return found
