"""Which samples trained which model version, in the compact form of app.provenance.models.

A root version owns its `training_sources`; a derived version (unlearned from a parent) shares its
parent's root and lists in `version_exclusions` every sample removed since the root. Nothing here writes
a row per sample per version except for samples a registrant listed one by one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, func, insert, literal, or_, select
from sqlalchemy.orm import Session

from app.errors import unprocessable
from app.provenance.models import Dataset, Sample, TrainingListedSample, TrainingSource, VersionExclusion
from app.registry.models import Model, ModelVersion

LOOKUP_CHUNK = 5000
MAX_REPORTED_MISSING = 10


@dataclass(frozen=True)
class TrainingSet:
    """A resolved training set: the samples of `dataset_id` with id <= upto_sample_id, or only
    `listed_sample_ids` among them when the registrant named the samples."""

    dataset_id: str
    upto_sample_id: int
    listed_sample_ids: tuple[int, ...] | None
    size: int


def _dataset_for(session: Session, tenant_id: str, dataset_name: str) -> Dataset:
    dataset = session.scalars(
        select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.name == dataset_name)
    ).one_or_none()
    if dataset is None:
        raise unprocessable(f"training_set.dataset: no dataset named {dataset_name!r}", "unknown-dataset")
    return dataset


def _sample_ids_by_external_id(
    session: Session, dataset_id: str, external_ids: Sequence[str]
) -> dict[str, int]:
    found: dict[str, int] = {}
    for start in range(0, len(external_ids), LOOKUP_CHUNK):
        chunk = external_ids[start : start + LOOKUP_CHUNK]
        rows = session.execute(
            select(Sample.external_id, Sample.id).where(
                Sample.dataset_id == dataset_id, Sample.external_id.in_(chunk)
            )
        )
        found.update({external_id: sample_id for external_id, sample_id in rows})
    return found


def resolve_training_set(
    session: Session, tenant_id: str, dataset_name: str, external_ids: Sequence[str] | None = None
) -> TrainingSet:
    """The training set named by a client: a whole dataset (as of now) or the listed samples of it."""
    dataset = _dataset_for(session, tenant_id, dataset_name)
    if external_ids is None:
        upto, size = session.execute(
            select(func.max(Sample.id), func.count(Sample.id)).where(Sample.dataset_id == dataset.id)
        ).one()
        if not size:
            raise unprocessable(f"dataset {dataset_name!r} has no samples", "empty-training-set")
        return TrainingSet(dataset.id, upto, None, size)
    wanted = list(dict.fromkeys(external_ids))
    if not wanted:
        raise unprocessable("training_set.external_ids is empty", "empty-training-set")
    found = _sample_ids_by_external_id(session, dataset.id, wanted)
    missing = [external_id for external_id in wanted if external_id not in found]
    if missing:
        shown = ", ".join(repr(external_id) for external_id in missing[:MAX_REPORTED_MISSING])
        raise unprocessable(
            f"{len(missing)} external_ids are not samples of dataset {dataset_name!r}: {shown}",
            "unknown-samples",
        )
    ids = tuple(sorted(found[external_id] for external_id in wanted))
    return TrainingSet(dataset.id, ids[-1], ids, len(ids))


def attach_training_set(session: Session, root: ModelVersion, training_set: TrainingSet) -> None:
    """Make `root` a root version trained on `training_set`."""
    root.training_root_id = root.id
    root.training_set_size = training_set.size
    session.add(
        TrainingSource(
            root_version_id=root.id,
            dataset_id=training_set.dataset_id,
            upto_sample_id=training_set.upto_sample_id,
            listed=training_set.listed_sample_ids is not None,
        )
    )
    session.flush()
    if training_set.listed_sample_ids:
        session.execute(
            insert(TrainingListedSample),
            [
                {"root_version_id": root.id, "sample_id": sample_id}
                for sample_id in training_set.listed_sample_ids
            ],
        )


def _covered_by_root(root_version_id: str) -> Select[tuple[int]]:
    """Ids of the samples in the training sources of a root version (before exclusions)."""
    source = TrainingSource
    listed = exists().where(
        TrainingListedSample.root_version_id == source.root_version_id,
        TrainingListedSample.sample_id == Sample.id,
    )
    return (
        select(Sample.id)
        .join(
            source,
            and_(
                source.dataset_id == Sample.dataset_id,
                source.root_version_id == root_version_id,
                or_(source.upto_sample_id.is_(None), Sample.id <= source.upto_sample_id),
            ),
        )
        .where(or_(source.listed.is_(False), listed))
    )


def training_sample_ids(version: ModelVersion) -> Select[tuple[int]]:
    """A query of the ids of the samples that trained `version` (workers build their data sets from it)."""
    if version.training_root_id is None:
        raise ValueError(f"version {version.id} has no training set")
    excluded = exists().where(
        VersionExclusion.version_id == version.id, VersionExclusion.sample_id == Sample.id
    )
    return _covered_by_root(version.training_root_id).where(~excluded)


def derive_training_set(
    session: Session, parent: ModelVersion, child: ModelVersion, removed_sample_ids: Iterable[int]
) -> int:
    """Give `child` its parent's training set minus `removed_sample_ids`; answers how many were removed
    (ids the parent was not trained on are ignored)."""
    if parent.training_root_id is None:
        raise ValueError(f"version {parent.id} has no training set")
    child.training_root_id = parent.training_root_id
    session.flush()
    session.execute(
        insert(VersionExclusion).from_select(
            ["version_id", "sample_id"],
            select(literal(child.id), VersionExclusion.sample_id).where(
                VersionExclusion.version_id == parent.id
            ),
        )
    )
    candidates = sorted(set(removed_sample_ids))
    removed: list[int] = []
    for start in range(0, len(candidates), LOOKUP_CHUNK):
        chunk = candidates[start : start + LOOKUP_CHUNK]
        removed.extend(session.scalars(training_sample_ids(parent).where(Sample.id.in_(chunk))))
    if removed:
        session.execute(
            insert(VersionExclusion),
            [{"version_id": child.id, "sample_id": sample_id} for sample_id in removed],
        )
    child.training_set_size = (parent.training_set_size or 0) - len(removed)
    return len(removed)


@dataclass(frozen=True)
class TrainedVersion:
    version_id: str
    model_id: str
    model_name: str
    version: int
    status: str
    tainted: bool
    sample_id: int


def trained_versions_query(tenant_id: Any, samples: ColumnElement[bool]) -> Select[Any]:
    """(version id, model id, model name, version, status, tainted, sample id) of every version trained
    on one of the tenant's samples that match `samples`. `tenant_id` may be a value or a bind parameter
    (app.asyncdb compiles this query once for its own connections)."""
    source = TrainingSource
    listed = exists().where(
        TrainingListedSample.root_version_id == source.root_version_id,
        TrainingListedSample.sample_id == Sample.id,
    )
    excluded = exists().where(
        VersionExclusion.version_id == ModelVersion.id, VersionExclusion.sample_id == Sample.id
    )
    return (
        select(
            ModelVersion.id,
            Model.id,
            Model.name,
            ModelVersion.version,
            ModelVersion.status,
            ModelVersion.tainted,
            Sample.id,
        )
        .join(
            source,
            and_(
                source.dataset_id == Sample.dataset_id,
                or_(source.upto_sample_id.is_(None), Sample.id <= source.upto_sample_id),
            ),
        )
        .join(ModelVersion, ModelVersion.training_root_id == source.root_version_id)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(Sample.tenant_id == tenant_id, samples, or_(source.listed.is_(False), listed), ~excluded)
        .order_by(Model.name, ModelVersion.version, Sample.id)
    )


def versions_trained_on(
    session: Session,
    tenant_id: str,
    *,
    subject_hmac: str | None = None,
    sample_ids: Sequence[int] | None = None,
) -> list[TrainedVersion]:
    """Every (version, sample) pair where the version was trained on one of the given samples (a
    subject's, or listed ids) of the tenant. The sample lookup is an index hit; the rest are small tables."""
    if (subject_hmac is None) == (sample_ids is None):
        raise ValueError("give subject_hmac or sample_ids")
    if subject_hmac is not None:
        stmt = trained_versions_query(tenant_id, Sample.subject_hmac == subject_hmac)
        return [TrainedVersion(*row) for row in session.execute(stmt)]
    hits: list[TrainedVersion] = []
    ids = sorted(set(sample_ids or ()))
    for start in range(0, len(ids), LOOKUP_CHUNK):
        chunk = ids[start : start + LOOKUP_CHUNK]
        stmt = trained_versions_query(tenant_id, Sample.id.in_(chunk))
        hits.extend(TrainedVersion(*row) for row in session.execute(stmt))
    return hits
