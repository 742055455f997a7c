"""Who is calling: the API key in `Authorization: Bearer ...` gives the tenant and the scopes.

Routes declare what they need with `require_scope(Scope.X)`; a missing or invalid key answers 401, a
key without the scope 403. The principal also lands on `request.state.principal` for logs and limits.

A key verified against the database is trusted for `settings.api_key_cache_seconds` (5 s by default)
by this process without another read: a database round trip per request was a large share of every
request's cost. A revoked key therefore keeps working for at most that long (at once in the process that
revoked it); keys that fail verification are never cached.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.requests import HTTPConnection
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from app.db import get_session_factory
from app.errors import ProblemError, forbidden
from app.security.keys import find_active_key, hash_api_key, parse_api_key
from app.settings import get_settings

bearer_scheme = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer lethe_...`")

# Bound on cached keys; past it, expired entries go, and if none has expired the cache starts over.
MAX_CACHED_KEYS = 10_000


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        """How the audit trail names this caller (the key id is public, the secret is not)."""
        return f"key:{self.key_id}"


class VerifiedKeys:
    """Principals of recently verified keys, by the keyed hash of the whole presented key (so a right
    key id with a wrong secret never matches an entry)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, principal: Principal, ttl: float) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= MAX_CACHED_KEYS:
                self._entries = {d: e for d, e in self._entries.items() if e[0] > now}
                if len(self._entries) >= MAX_CACHED_KEYS:
                    self._entries = {}
            self._entries[digest] = (now + ttl, principal)

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._entries = {d: e for d, e in self._entries.items() if e[1].key_id != key_id}


verified_keys = VerifiedKeys()
# Database reads of keys under way, per event loop (test clients run several loops).
_lookups_in_flight: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, asyncio.Future[Principal | None]]
] = weakref.WeakKeyDictionary()


def forget_key(key_id: str) -> None:
    """Stop trusting a cached key in this process at once (called when it is revoked here)."""
    verified_keys.forget(key_id)


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, "Unauthorized", detail, "unauthorized", headers={"WWW-Authenticate": "Bearer"})


def _principal_from_database(plaintext: str) -> Principal | None:
    with get_session_factory()() as session:
        api_key = find_active_key(session, plaintext)
        if api_key is None:
            return None
        return Principal(tenant_id=api_key.tenant_id, key_id=api_key.key_id, scopes=frozenset(api_key.scopes))


async def principal_of_key(plaintext: str) -> Principal | None:
    """The principal of a presented key, None when it is not a valid, active key."""
    if parse_api_key(plaintext) is None:
        return None
    ttl = get_settings().api_key_cache_seconds
    if ttl <= 0:
        return await run_in_threadpool(_principal_from_database, plaintext)
    digest = hash_api_key(plaintext)
    principal = verified_keys.get(digest)
    if principal is not None:
        return principal
    # One database read per key when its entry lapses, however many requests are waiting for it.
    lookups = _lookups_in_flight.setdefault(asyncio.get_running_loop(), {})
    lookup = lookups.get(digest)
    if lookup is None:
        lookup = lookups[digest] = asyncio.ensure_future(
            run_in_threadpool(_principal_from_database, plaintext)
        )
        lookup.add_done_callback(lambda _: lookups.pop(digest, None))
    principal = await asyncio.shield(lookup)
    if principal is not None:
        verified_keys.put(digest, principal, ttl)
    return principal


async def _authenticated(
    request: HTTPConnection, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("missing bearer API key")
    principal = await principal_of_key(credentials.credentials)
    if principal is None:
        raise _unauthorized("invalid or revoked API key")
    request.state.principal = principal
    return principal


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The caller's principal, whatever its scopes."""
    return await _authenticated(request, credentials)


class ScopedBearer(HTTPBearer):
    """The dependency of a route that needs `scope`: the principal of the bearer API key, 401 without a
    valid key, 403 without the scope. One dependency rather than three (bearer, authenticate, scope):
    each costs the framework tens of microseconds a request. OpenAPI shows it as `bearer_scheme`."""

    def __init__(self, scope: str) -> None:
        super().__init__(
            auto_error=False,
            scheme_name=bearer_scheme.scheme_name,
            description=bearer_scheme.model.description,
        )
        self.scope = scope

    async def __call__(self, request: HTTPConnection) -> Principal:  # type: ignore[override]
        principal = await _authenticated(request, await super().__call__(request))
        if self.scope not in principal.scopes:
            raise forbidden(f"this API key lacks the scope {self.scope}", "missing-scope")
        return principal


@lru_cache
def require_scope(scope: str) -> Any:
    """A dependency answering the principal when its key carries `scope`, else 403."""
    return ScopedBearer(scope)
