"""Which samples trained which model version, in the compact form of app.provenance.models.

A root version owns its `training_sources`; a derived version (unlearned from a parent) shares its
parent's root and lists in `version_exclusions` every sample removed since the root. Nothing here writes
a row per sample per version except for samples a registrant listed one by one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, func, insert, literal, or_, select
from sqlalchemy.orm import Session

from app.errors import unprocessable
from app.provenance.models import (
    Dataset,
    HeldoutSample,
    Sample,
    TrainingListedSample,
    TrainingSource,
    VersionExclusion,
)
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


def _dataset_for(
    session: Session, tenant_id: str, dataset_name: str, field: str = "training_set.dataset"
) -> Dataset:
    dataset = session.scalars(
        select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.name == dataset_name)
    ).one_or_none()
    if dataset is None:
        raise unprocessable(f"{field}: no dataset named {dataset_name!r}", "unknown-dataset")
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
    if not external_ids:
        raise unprocessable("training_set.external_ids is empty", "empty-training-set")
    found = _listed_samples(session, dataset, external_ids, "training_set.external_ids")
    ids = tuple(sorted(found.values()))
    return TrainingSet(dataset.id, ids[-1], ids, len(ids))


def _listed_samples(
    session: Session, dataset: Dataset, external_ids: Sequence[str], field: str
) -> dict[str, int]:
    """external_id -> sample id of each listed sample, in the order listed; 422 naming unknown ones."""
    wanted = list(dict.fromkeys(external_ids))
    found = _sample_ids_by_external_id(session, dataset.id, wanted)
    missing = [external_id for external_id in wanted if external_id not in found]
    if missing:
        shown = ", ".join(repr(external_id) for external_id in missing[:MAX_REPORTED_MISSING])
        raise unprocessable(
            f"{field}: {len(missing)} are not samples of dataset {dataset.name!r}: {shown}", "unknown-samples"
        )
    return {external_id: found[external_id] for external_id in wanted}


def attach_training_set(session: Session, root: ModelVersion, *training_sets: TrainingSet) -> None:
    """Make `root` a root version trained on `training_sets` (one per dataset)."""
    root.training_root_id = root.id
    root.training_set_size = sum(training_set.size for training_set in training_sets)
    for training_set in training_sets:
        session.add(
            TrainingSource(
                root_version_id=root.id,
                dataset_id=training_set.dataset_id,
                upto_sample_id=training_set.upto_sample_id,
                listed=training_set.listed_sample_ids is not None,
            )
        )
    session.flush()
    for training_set in training_sets:
        if training_set.listed_sample_ids:
            session.execute(
                insert(TrainingListedSample),
                [
                    {"root_version_id": root.id, "sample_id": sample_id}
                    for sample_id in training_set.listed_sample_ids
                ],
            )


def with_training_set_of(
    session: Session, training_set: TrainingSet, base: ModelVersion
) -> list[TrainingSet]:
    """`training_set` together with everything `base` was trained on, one listed set per dataset: a model
    fine-tuned from `base` still holds what `base` learnt, so a deletion must find it too."""
    by_dataset: dict[str, set[int]] = {}
    inherited = select(Sample.dataset_id, Sample.id).where(Sample.id.in_(training_sample_ids(base)))
    for dataset_id, sample_id in session.execute(inherited):
        by_dataset.setdefault(dataset_id, set()).add(sample_id)
    own = {sample_id for sample_id, _ in session.execute(_training_set_rows(training_set))}
    by_dataset.setdefault(training_set.dataset_id, set()).update(own)
    return [
        TrainingSet(dataset_id, max(ids), tuple(sorted(ids)), len(ids))
        for dataset_id, ids in sorted(by_dataset.items())
    ]


def _training_set_rows(training_set: TrainingSet) -> Select[tuple[int, str]]:
    """(id, subject_hmac) of the samples of a resolved training set, by id."""
    stmt = select(Sample.id, Sample.subject_hmac).where(
        Sample.dataset_id == training_set.dataset_id, Sample.id <= training_set.upto_sample_id
    )
    if training_set.listed_sample_ids is not None:
        stmt = stmt.where(Sample.id.in_(training_set.listed_sample_ids))
    return stmt.order_by(Sample.id)


def _subject_rank(subject_hmac: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{subject_hmac}".encode()).hexdigest()


def reserve_heldout(
    session: Session, training_set: TrainingSet, fraction: float, seed: int
) -> tuple[TrainingSet, tuple[int, ...]]:
    """Split a training set by subject: (what is trained on, the held-out sample ids).

    round(fraction x subjects) subjects, chosen by a hash of (seed, subject) so the same request reserves
    the same people, keep all their samples out of training; at least one subject stays on each side when
    fraction > 0 and there are two or more subjects."""
    rows = session.execute(_training_set_rows(training_set)).all()
    subjects = sorted({subject for _, subject in rows}, key=lambda subject: _subject_rank(subject, seed))
    count = round(fraction * len(subjects))
    if fraction > 0 and len(subjects) >= 2:
        count = min(max(count, 1), len(subjects) - 1)
    reserved = set(subjects[:count])
    if not reserved:
        return training_set, ()
    kept = tuple(sample_id for sample_id, subject in rows if subject not in reserved)
    heldout = tuple(sample_id for sample_id, subject in rows if subject in reserved)
    return TrainingSet(training_set.dataset_id, kept[-1], kept, len(kept)), heldout


def resolve_heldout(
    session: Session,
    tenant_id: str,
    dataset_name: str,
    external_ids: Sequence[str] | None,
    training_set: TrainingSet,
) -> tuple[int, ...]:
    """Ids of the named held-out samples (the listed ones, or the whole dataset as of now); 422 when some
    are unknown or in the training set."""
    dataset = _dataset_for(session, tenant_id, dataset_name, "heldout.dataset")
    if external_ids is None:
        rows = session.execute(
            select(Sample.id, Sample.external_id).where(Sample.dataset_id == dataset.id).order_by(Sample.id)
        )
        ids = {sample_id: external_id for sample_id, external_id in rows}
    else:
        listed = _listed_samples(session, dataset, external_ids, "heldout.external_ids")
        ids = {sample_id: external_id for external_id, sample_id in listed.items()}
    if not ids:
        raise unprocessable(f"heldout.dataset: dataset {dataset_name!r} has no samples", "empty-heldout")
    if dataset.id == training_set.dataset_id:
        listed = set(training_set.listed_sample_ids or ())
        whole = training_set.listed_sample_ids is None
        trained = sorted(
            sample_id
            for sample_id in ids
            if (sample_id <= training_set.upto_sample_id if whole else sample_id in listed)
        )
        if trained:
            shown = ", ".join(repr(ids[sample_id]) for sample_id in trained[:MAX_REPORTED_MISSING])
            raise unprocessable(
                f"heldout: {len(trained)} of these samples are in the training set: {shown}",
                "heldout-in-training-set",
            )
    return tuple(sorted(ids))


def attach_heldout(session: Session, root: ModelVersion, sample_ids: Sequence[int]) -> None:
    if sample_ids:
        session.execute(
            insert(HeldoutSample),
            [{"root_version_id": root.id, "sample_id": sample_id} for sample_id in sample_ids],
        )


def heldout_sample_ids(version: ModelVersion) -> Select[tuple[int]]:
    """Ids of the samples declared held out for `version`'s root (none for roots that declared none)."""
    return select(HeldoutSample.sample_id).where(HeldoutSample.root_version_id == version.training_root_id)


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
