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


class CheckpointOut(BaseModel):
    """The latest signed checkpoint of the tenant's chain (app.audit.checkpoints)."""

    seq: int = Field(description="events the checkpoint covers")
    head_hash: str = Field(description="hash of event `seq` when the checkpoint was signed")
    issued_at: datetime
    key_id: str = Field(description="the Ed25519 key that signed it")
    key_trusted: bool = Field(
        description="signed by the configured audit key; false when none is configured (integrity only)"
    )


class AuditVerification(BaseModel):
    ok: bool = Field(description="the chain is intact and still holds the head of its latest checkpoint")
    checked: int = Field(description="events verified before the first break (all of them when ok)")
    broken_at: int | None = Field(default=None, description="seq of the first missing or altered event")
    reason: str | None = None
    checkpoint: CheckpointOut | None = Field(
        default=None, description="the latest checkpoint the chain was checked against (null: none yet)"
    )
