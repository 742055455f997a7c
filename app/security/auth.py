"""Who is calling: the API key in `Authorization: Bearer ...` gives the tenant and the scopes.

Routes declare what they need with `require_scope(Scope.X)`; a missing or invalid key answers 401, a
key without the scope 403. The principal also lands on `request.state.principal` for logs and limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.db import SessionDep
from app.errors import ProblemError, forbidden
from app.security.keys import find_active_key

bearer_scheme = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer lethe_...`")


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        """How the audit trail names this caller (the key id is public, the secret is not)."""
        return f"key:{self.key_id}"


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, "Unauthorized", detail, "unauthorized", headers={"WWW-Authenticate": "Bearer"})


def authenticate(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("missing bearer API key")
    api_key = find_active_key(session, credentials.credentials)
    if api_key is None:
        raise _unauthorized("invalid or revoked API key")
    principal = Principal(
        tenant_id=api_key.tenant_id, key_id=api_key.key_id, scopes=frozenset(api_key.scopes)
    )
    request.state.principal = principal
    return principal


@lru_cache
def require_scope(scope: str) -> Any:
    """A dependency answering the principal when its key carries `scope`, else 403."""

    def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if scope not in principal.scopes:
            raise forbidden(f"this API key lacks the scope {scope}", "missing-scope")
        return principal

    dependency.__name__ = f"require_scope_{scope.replace(':', '_')}"
    return dependency
