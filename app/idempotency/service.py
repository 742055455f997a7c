"""Idempotency-Key on creating POSTs (API.md, Conventions).

The same key with the same request replays the first answer (status and body); with another request it
answers 422; while the first is still in flight 409. Keys are scoped per tenant.

How: the guard takes a transaction-level advisory lock on (tenant, key) in the request's own session, so
a second request with the key finds the lock taken (409) until the first commits; the answer is stored in
that same transaction by `finish`, so the created object and its replayable answer commit together or
not at all. A failed request stores nothing and may be retried with the same key.

Use in a router (the guard checks the scope before it looks at the key, so a key lacking the scope cannot
read replays):

    @router.post("/v1/things", status_code=201)
    def create_thing(body: ThingIn, session: SessionDep,
                     idempotency: Annotated[Idempotency, Depends(idempotent(Scope.THINGS_WRITE))]):
        thing = service.create_thing(session, idempotency.principal, body)   # no commit yet
        return idempotency.finish(ThingOut.model_validate(thing), 201)      # stores + commits
"""

# No `from __future__ import annotations`: the guard's annotations name the closure's `scope`, which
# FastAPI must evaluate at definition time.
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Header, Request
from fastapi.encoders import jsonable_encoder
from sqlalchemy import String, any_, bindparam, func, insert, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from app.asyncdb import compiled_sql
from app.db import SessionDep, new_id, utcnow
from app.errors import ProblemError, unprocessable
from app.idempotency.hashing import request_hash
from app.idempotency.models import IdempotencyKey, IdempotencyState
from app.security.auth import Principal, require_scope

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# First half of the two-int advisory lock id: keeps these locks apart from other advisory locks.
ADVISORY_LOCK_CLASS = 0x1D3
IN_FLIGHT_RETRY_AFTER_SECONDS = 1


class IdempotentReplay(Exception):
    """Raised by the guard when the request repeats a finished one; answered by the stored response."""

    def __init__(self, status_code: int, body: Any) -> None:
        super().__init__(status_code)
        self.status_code = status_code
        self.body = body


@dataclass
class Idempotency:
    """What a creating endpoint receives: the caller, and where to store its answer."""

    session: Session
    principal: Principal
    key: str | None
    method: str
    path: str
    request_hash: str

    def record(self, body: Any, status_code: int) -> Any:
        """Store the answer in the session's transaction (no commit); answers `body` unchanged."""
        if self.key is not None:
            row = done_key_row(
                self.principal.tenant_id, self.key, self.method, self.path, self.request_hash, status_code,
                jsonable_encoder(body), utcnow(),
            )  # fmt: skip
            self.session.execute(insert(IdempotencyKey.__table__), [row])
        return body

    def finish(self, body: Any, status_code: int) -> Any:
        """Store the answer and commit: the created state and its replay commit together."""
        self.record(body, status_code)
        self.session.commit()
        return body


def _lock_id(tenant_id: str, key: str) -> int:
    digest = hashlib.blake2b(f"{tenant_id}\0{key}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def validated_key(raw: str | None) -> str | None:
    """The Idempotency-Key header's value when well-formed (None when absent); 400 otherwise."""
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_KEY_LENGTH or not raw.isprintable() or not raw.isascii():
        raise ProblemError(
            400,
            "Bad request",
            f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            "invalid-idempotency-key",
        )
    return raw


def in_flight() -> ProblemError:
    return ProblemError(
        409,
        "Conflict",
        f"a request with this {IDEMPOTENCY_HEADER} is still in flight; retry when it has finished",
        "idempotency-in-flight",
        headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER_SECONDS)},
    )


def claim_key(session: Session, tenant_id: str, key: str) -> bool:
    """Hold (tenant, key) until this transaction ends; False when another request holds it."""
    if session.get_bind().dialect.name != "postgresql":
        return True  # the embedded SQLite demo serialises writers anyway; the unique key still holds
    return bool(
        session.scalar(select(func.pg_try_advisory_xact_lock(ADVISORY_LOCK_CLASS, _lock_id(tenant_id, key))))
    )


class StoredKey(Protocol):
    request_hash: str
    state: str
    response_status: int | None
    response_body: Any


def judge_reuse(stored: StoredKey | None, digest: str) -> None:
    """Nothing when the key is new; else raise what its earlier use means for this request: 422 for
    another request, 409 while that one is in flight, the stored answer (IdempotentReplay) once done."""
    if stored is None:
        return
    if stored.request_hash != digest:
        raise unprocessable(
            f"this {IDEMPOTENCY_HEADER} was used for another request; use a new key for a new request",
            "idempotency-mismatch",
        )
    if stored.state != IdempotencyState.DONE or stored.response_status is None:
        raise in_flight()
    raise IdempotentReplay(stored.response_status, stored.response_body)


@dataclass(frozen=True)
class StoredKeyRow:
    key: str
    request_hash: str
    state: str
    response_status: int | None
    response_body: Any


def stored_keys_query(tenant_id: Any, keys: Any) -> Any:
    """Earlier uses of keys, as rows of StoredKeyRow: `keys` is a condition on IdempotencyKey.key."""
    return select(
        IdempotencyKey.key,
        IdempotencyKey.request_hash,
        IdempotencyKey.state,
        IdempotencyKey.response_status,
        IdempotencyKey.response_body,
    ).where(IdempotencyKey.tenant_id == tenant_id, keys)


def stored_key(session: Session, tenant_id: str, key: str) -> StoredKeyRow | None:
    row = session.execute(stored_keys_query(tenant_id, IdempotencyKey.key == key)).first()
    return StoredKeyRow(*row) if row is not None else None


def check_key(session: Session, tenant_id: str, key: str, digest: str) -> None:
    """Claim the key (409 while another request holds it), then refuse or replay when it was used
    before."""
    if not claim_key(session, tenant_id, key):
        raise in_flight()
    judge_reuse(stored_key(session, tenant_id, key), digest)


# --- the same for bulk writers on app.asyncdb (Postgres) ---------------------------------------------


def claims_sql(tenant_id: str, keys: Sequence[str]) -> tuple[str, tuple[int, list[int]]]:
    """The statement that claims each (tenant, key) until the transaction ends, as claim_key does; its one
    row holds a boolean per key, false where another transaction holds the key (then: 409)."""
    return (
        "SELECT array_agg(pg_try_advisory_xact_lock(%s, lock_id) ORDER BY position) "
        "FROM unnest(%s::int[]) WITH ORDINALITY AS claimed(lock_id, position)",
        (ADVISORY_LOCK_CLASS, [_lock_id(tenant_id, key) for key in keys]),
    )


@lru_cache(maxsize=1)
def stored_keys_sql() -> str:
    """stored_keys_query for app.asyncdb: parameters tenant_id and keys (a list)."""
    keys = IdempotencyKey.key == any_(bindparam("keys", type_=ARRAY(String)))
    return compiled_sql(stored_keys_query(bindparam("tenant_id"), keys))


# The columns of IdempotencyKey that done_key_row fills.
KEY_COLUMNS = (
    "id", "tenant_id", "key", "method", "path", "request_hash", "state", "response_status",
    "response_body", "created_at",
)  # fmt: skip


def done_key_row(
    tenant_id: str, key: str, method: str, path: str, digest: str, status_code: int, body: Any, now: datetime
) -> dict[str, Any]:
    """A finished key with its answer (JSON-ready `body`), as a row of KEY_COLUMNS."""
    return {
        "id": new_id(),
        "tenant_id": tenant_id,
        "key": key,
        "method": method,
        "path": path,
        "request_hash": digest,
        "state": IdempotencyState.DONE,
        "response_status": status_code,
        "response_body": body,
        "created_at": now,
    }


async def request_digest(request: Request) -> str:
    """What identifies "the same request" for a key. Only computed when a key is sent: for a bulk body
    it is the dearest part of the request."""
    # FastAPI has already read (and cached) the body when the dependencies run.
    body = await request.body()
    return request_hash(request.method, request.url.path, request.url.query, body)


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        description="Retry-safe creation: the same key with the same body replays the first answer.",
    ),
]


@lru_cache
def idempotent(scope: str) -> Any:
    """The guard of a creating POST that needs `scope`: a dependency answering an `Idempotency`."""

    async def guard(
        request: Request,
        session: SessionDep,
        principal: Annotated[Principal, Depends(require_scope(scope))],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Idempotency:
        key = validated_key(idempotency_key)
        digest = ""
        if key is not None:
            digest = await request_digest(request)
            await run_in_threadpool(check_key, session, principal.tenant_id, key, digest)
        return Idempotency(session, principal, key, request.method, request.url.path, digest)

    guard.__name__ = f"idempotent_{scope.replace(':', '_')}"
    return guard


async def _answer_replay(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IdempotentReplay)
    return JSONResponse(exc.body, status_code=exc.status_code, headers={REPLAY_HEADER: "true"})


def install_idempotency_handler(app: FastAPI) -> None:
    app.add_exception_handler(IdempotentReplay, _answer_replay)
