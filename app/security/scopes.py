"""The scopes an API key can carry (API.md, Conventions)."""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    REQUESTS_WRITE = "requests:write"
    REQUESTS_READ = "requests:read"
    PROVENANCE_WRITE = "provenance:write"
    PROVENANCE_READ = "provenance:read"
    MODELS_READ = "models:read"
    MODELS_WRITE = "models:write"
    MODELS_PROMOTE = "models:promote"
    AUDIT_READ = "audit:read"


ALL_SCOPES: tuple[str, ...] = tuple(scope.value for scope in Scope)
