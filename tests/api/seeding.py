"""Rows the deletion-request tests start from: a dataset of subjects' samples and models trained on it,
written straight to the database (the registration endpoints have their own tests)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from app.db import session_scope
from app.provenance.models import Dataset, Sample, TrainingSource
from app.registry.models import Model, ModelVersion, VersionStatus
from app.security.subjects import subject_hmac


@dataclass
class Seeded:
    dataset_id: str
    samples: dict[str, list[int]] = field(default_factory=dict)  # subject -> sample ids
    models: dict[str, str] = field(default_factory=dict)  # short name -> registered (unique) name
    versions: dict[str, str] = field(default_factory=dict)  # model name -> version id


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def add_samples(session: Session, tenant_id: str, dataset_id: str, subject: str, count: int) -> list[int]:
    samples = []
    for index in range(count):
        text = f"{subject} record {index} {uuid.uuid4().hex}"
        samples.append(
            Sample(
                tenant_id=tenant_id,
                dataset_id=dataset_id,
                external_id=_unique("s"),
                subject_hmac=subject_hmac(subject),
                content_hash=hashlib.sha256(text.encode()).hexdigest(),
                text=text,
                label=index % 2,
            )
        )
    session.add_all(samples)
    session.flush()
    return [sample.id for sample in samples]


def add_model(
    session: Session, tenant_id: str, dataset_id: str, name: str | None = None
) -> tuple[Model, ModelVersion]:
    """A model whose version 1 was trained on every sample of the dataset so far."""
    model = Model(tenant_id=tenant_id, name=name or _unique("model"), task="sequence-classification")
    session.add(model)
    session.flush()
    version = ModelVersion(
        tenant_id=tenant_id,
        model_id=model.id,
        version=1,
        status=VersionStatus.REGISTERED,
        artifact_uri="file:///x",
    )
    session.add(version)
    session.flush()
    version.training_root_id = version.id
    upto = (
        session.query(Sample.id)
        .filter(Sample.dataset_id == dataset_id)
        .order_by(Sample.id.desc())
        .limit(1)
        .scalar()
    )
    session.add(TrainingSource(root_version_id=version.id, dataset_id=dataset_id, upto_sample_id=upto))
    session.flush()
    return model, version


def seed(tenant_id: str, subjects: dict[str, int], model_names: tuple[str, ...] = ("m1",)) -> Seeded:
    """Samples for each subject, then models trained on all of them (names made unique per call)."""
    with session_scope() as session:
        dataset = Dataset(tenant_id=tenant_id, name=_unique("ds"), kind="text")
        session.add(dataset)
        session.flush()
        seeded = Seeded(dataset_id=dataset.id)
        for subject, count in subjects.items():
            seeded.samples[subject] = add_samples(session, tenant_id, dataset.id, subject, count)
        for name in model_names:
            model, version = add_model(session, tenant_id, dataset.id, _unique(name))
            seeded.models[name] = model.name
            seeded.versions[name] = version.id
        return seeded


def unique_subject() -> str:
    return f"person-{uuid.uuid4().hex[:10]}@example.com"
