from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int = Field(description="position in the tenant's chain, from 1 without gaps")
    entity_type: str
    entity_id: str
    action: str
    data: dict[str, Any]
    actor: str | None
    created_at: datetime
    prev_hash: str
    hash: str


class AuditVerification(BaseModel):
    ok: bool
    checked: int = Field(description="events verified before the first break (all of them when ok)")
    broken_at: int | None = Field(default=None, description="seq of the first missing or altered event")
    reason: str | None = None
