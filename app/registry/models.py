"""Model registry: models, their versions with lineage and taint, aliases and the aliases' history."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, BigIntPK, new_id, one_of, utcnow


class ModelTask(StrEnum):
    CAUSAL_LM = "causal-lm"
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    IMAGE_CLASSIFICATION = "image-classification"
    TABULAR_CLASSIFICATION = "tabular-classification"


class VersionStatus(StrEnum):
    CHECKING = "checking"  # registered artifact waiting for a worker to load it; not promotable yet
    REGISTERED = "registered"  # attested by the registrant: promotable like "verified"
    TRAINING = "training"
    CANDIDATE = "candidate"
    VERIFIED = "verified"
    REJECTED = "rejected"
    FAILED = "failed"


PROMOTABLE_STATUSES = frozenset({VersionStatus.REGISTERED, VersionStatus.VERIFIED})


class ArtifactFormat(StrEnum):
    """How a version's files are laid out (app.registry.artifacts recognises them)."""

    HUGGINGFACE = "huggingface"  # a save_pretrained folder: config.json, safetensors weights, tokenizer
    TORCH_CLASSIFIER = "torch-classifier"  # classifier.json naming the architecture + model.safetensors
    LETHE = "lethe"  # adapter.json + model.safetensors, as the engine saves a model


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"), one_of("task", ModelTask))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(40))
    description: Mapped[str | None] = mapped_column(Text)
    # Unlearning method and gate overrides for this model.
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        one_of("status", VersionStatus),
        one_of("artifact_format", ArtifactFormat),
        Index("ix_model_versions_tenant_id_model_id", "tenant_id", "model_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    status: Mapped[str] = mapped_column(String(20))
    tainted: Mapped[bool] = mapped_column(default=False)
    tainted_at: Mapped[datetime | None]
    taint_reason: Mapped[str | None] = mapped_column(Text)
    artifact_uri: Mapped[str | None] = mapped_column(Text)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    artifact_format: Mapped[str | None] = mapped_column(String(40))
    # Why the version has its status when that needs saying (e.g. the artifact failed to load).
    status_reason: Mapped[str | None] = mapped_column(Text)
    method: Mapped[str | None] = mapped_column(String(100))
    # True when the version was retrained from scratch without the forgotten data (exact unlearning).
    exact: Mapped[bool] = mapped_column(default=False)
    # The version whose training_sources define this one's training set (itself for a root version).
    training_root_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"), index=True)
    training_set_size: Mapped[int | None] = mapped_column(BigInteger)
    training_fingerprint: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    verification: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    purged_at: Mapped[datetime | None]

    @property
    def promotable(self) -> bool:
        """May an alias point here: attested or verified, not tainted, artifact not purged."""
        return self.status in PROMOTABLE_STATUSES and not self.tainted and self.purged_at is None


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    name: Mapped[str] = mapped_column(String(100))
    version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AliasHistory(Base):
    """Every move of an alias; the row in force at time T names the version that served then."""

    __tablename__ = "alias_history"
    __table_args__ = (Index("ix_alias_history_alias_id_changed_at", "alias_id", "changed_at"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    alias_id: Mapped[str] = mapped_column(ForeignKey("aliases.id", ondelete="CASCADE"))
    from_version_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    to_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(200))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
