"""Deletion requests: the subject's samples they resolved to, the models they affect, their timeline.

The states here are the columns' vocabularies; which state may follow which, and how a request's status
follows its models' progress, is app.requests.lifecycle.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, BigIntPK, new_id, one_of, utcnow


class RequestStatus(StrEnum):
    RECEIVED = "received"
    RESOLVED = "resolved"
    NO_DATA = "no_data"
    QUEUED = "queued"
    UNLEARNING = "unlearning"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


# Requests still in progress (everything but completed, failed, canceled and no_data).
OPEN_STATUSES: tuple[str, ...] = (
    RequestStatus.RECEIVED,
    RequestStatus.RESOLVED,
    RequestStatus.QUEUED,
    RequestStatus.UNLEARNING,
    RequestStatus.VERIFYING,
)
# Failed requests wait for someone to act (retry, extend, or answer the data subject): a failure does
# not end the obligation, so their deadline keeps running like an open request's.
ACTION_NEEDED_STATUSES: tuple[str, ...] = (RequestStatus.FAILED,)
DEADLINE_STATUSES: tuple[str, ...] = (*OPEN_STATUSES, *ACTION_NEEDED_STATUSES)


class ModelStatus(StrEnum):
    """The progress of one request on one affected model (deletion_request_models.status)."""

    PENDING = "pending"  # resolved at intake, not yet in a job
    QUEUED = "queued"
    UNLEARNING = "unlearning"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


class Regime(StrEnum):
    GDPR = "gdpr"
    CCPA = "ccpa"


class DeletionRequest(Base):
    __tablename__ = "deletion_requests"
    __table_args__ = (
        one_of("status", RequestStatus),
        one_of("regime", Regime),
        Index("ix_deletion_requests_tenant_id_status", "tenant_id", "status"),
        Index("ix_deletion_requests_tenant_id_due_at", "tenant_id", "due_at"),
        Index("ix_deletion_requests_tenant_id_received_at", "tenant_id", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    # Keyed HMAC of the normalised subject id; null when the request named samples directly.
    subject_hmac: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default=RequestStatus.RECEIVED)
    regime: Mapped[str] = mapped_column(String(10), default=Regime.GDPR)
    method: Mapped[str] = mapped_column(String(100), default="auto")
    # Model names the client restricted the request to; null = every model trained on the data.
    requested_models: Mapped[list[str] | None]
    callback_url: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    due_at: Mapped[datetime]
    extension_reason: Mapped[str | None] = mapped_column(Text)
    extended_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    failure_reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DeletionRequestSample(Base):
    __tablename__ = "deletion_request_samples"

    request_id: Mapped[str] = mapped_column(
        ForeignKey("deletion_requests.id", ondelete="CASCADE"), primary_key=True
    )
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), primary_key=True, index=True)


class DeletionRequestModel(Base):
    """Progress of one request on one affected model."""

    __tablename__ = "deletion_request_models"

    request_id: Mapped[str] = mapped_column(
        ForeignKey("deletion_requests.id", ondelete="CASCADE"), primary_key=True
    )
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), primary_key=True, index=True)
    status: Mapped[str] = mapped_column(String(20), default=ModelStatus.PENDING)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    from_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    to_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))


class RequestEvent(Base):
    """One transition of a request: the timeline shown to clients."""

    __tablename__ = "request_events"
    __table_args__ = (Index("ix_request_events_request_id_at", "request_id", "at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("deletion_requests.id", ondelete="CASCADE"))
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
