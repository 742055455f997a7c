"""Training-sample provenance: datasets, samples, data subjects, and which samples trained which version.

Membership is compact (no row per sample per version): a root version (one trained from data rather than
derived by unlearning) owns `training_sources` ("every sample of dataset D with id <= upto", optionally
restricted to `training_listed_samples`), and each version lists the samples removed relative to its root in
`version_exclusions`. Sample s trained version v iff a source of v's root covers s and (v, s) is not
excluded.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, BigIntPK, JSONType, new_id, one_of, utcnow


class DatasetKind(StrEnum):
    TEXT = "text"
    CLASSIFICATION = "classification"


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("tenant_id", "name"), one_of("kind", DatasetKind))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    description: Mapped[str | None] = mapped_column(Text)
    # Class name -> integer label: samples may then send their label by name (stored as the integer).
    label_map: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DataSubject(Base):
    __tablename__ = "data_subjects"
    __table_args__ = (UniqueConstraint("tenant_id", "subject_hmac"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    subject_hmac: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sample(Base):
    """One training sample. Its id comes from one global sequence, so "id <= upto" freezes a training set."""

    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("dataset_id", "external_id"),
        Index("ix_samples_tenant_id_subject_hmac", "tenant_id", "subject_hmac"),
        Index("ix_samples_dataset_id_id", "dataset_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    # No foreign keys, whose checks run once per row: the tenant is the dataset's, and that the dataset
    # exists, triggers check once per statement (migration 0002 says why).
    tenant_id: Mapped[str] = mapped_column(String(36))
    dataset_id: Mapped[str] = mapped_column(String(36))
    external_id: Mapped[str] = mapped_column(String(256))
    subject_hmac: Mapped[str] = mapped_column(String(64))
    # sha256 of the canonical content: kept after the content itself is erased, for the audit.
    content_hash: Mapped[str] = mapped_column(String(64))
    text: Mapped[str | None] = mapped_column(Text)
    features: Mapped[Any | None] = mapped_column(JSONType)
    label: Mapped[Any | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    erased_at: Mapped[datetime | None]


class TrainingSource(Base):
    """Part of a root version's training set: the samples of one dataset with id <= upto_sample_id
    (or, when `listed`, only those of them named in training_listed_samples)."""

    __tablename__ = "training_sources"

    root_version_id: Mapped[str] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    upto_sample_id: Mapped[int | None] = mapped_column(BigInteger)
    listed: Mapped[bool] = mapped_column(default=False)


class TrainingListedSample(Base):
    __tablename__ = "training_listed_samples"

    root_version_id: Mapped[str] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), primary_key=True)


class HeldoutSample(Base):
    """A sample a root version was NOT trained on and that verification may use as held-out data: named
    by the registrant of an existing artifact, or reserved by the service's own training."""

    __tablename__ = "heldout_samples"

    root_version_id: Mapped[str] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), primary_key=True)


class VersionExclusion(Base):
    """A sample removed from a version's training set relative to its root (forgotten by unlearning)."""

    __tablename__ = "version_exclusions"

    version_id: Mapped[str] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), primary_key=True)
