"""The engine's data from the service's provenance: forget, retain, validation and held-out samples.

- forget: the job's samples that trained the version being unlearned;
- retain: the rest of that version's training set;
- validation (for the methods) and held-out (for verification): the samples declared held out for the
  version's lineage (named at registration, or reserved by the service's training), else the samples of
  its datasets that did not train it; split by data subject so that the two never share a person (a
  stable hash decides). Without any, verification has nothing to compare with and cannot pass.
Samples whose content was already erased cannot be fed to a model and are left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.provenance.membership import heldout_sample_ids, training_sample_ids
from app.provenance.models import Sample as SampleRow
from app.provenance.models import TrainingSource
from app.registry.models import ModelVersion

if TYPE_CHECKING:
    from workers.modeling.base import Sample

CHUNK = 5000


def engine_sample(row: SampleRow) -> Sample:
    """A sample row as the engine sees it: id as text, the subject's HMAC as subject."""
    import numpy as np

    from workers.modeling.base import Sample

    features = np.asarray(row.features, dtype=np.float32) if row.features is not None else None
    return Sample(str(row.id), row.subject_hmac, text=row.text, features=features, label=_label(row.label))


def _label(value: Any) -> int | None:
    """Class labels are integers; anything else (none, free text) is no label for the engine."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def placeholder_sample(sample_id: int, subject_hmac: str) -> Sample:
    """A forgotten sample known by id only (content erased): enough for methods that only exclude it."""
    from workers.modeling.base import Sample

    return Sample(str(sample_id), subject_hmac)


def has_content(row: SampleRow) -> bool:
    return row.erased_at is None and (row.text is not None or row.features is not None)


def load_rows(session: Session, sample_ids: Iterable[int]) -> list[SampleRow]:
    ids = sorted(set(sample_ids))
    rows: list[SampleRow] = []
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        rows.extend(session.scalars(select(SampleRow).where(SampleRow.id.in_(chunk)).order_by(SampleRow.id)))
    return rows


def trained_ids(session: Session, version: ModelVersion) -> set[int]:
    return set(session.scalars(training_sample_ids(version)))


def training_rows(session: Session, version: ModelVersion) -> list[SampleRow]:
    return list(
        session.scalars(
            select(SampleRow).where(SampleRow.id.in_(training_sample_ids(version))).order_by(SampleRow.id)
        )
    )


def untrained_rows(session: Session, version: ModelVersion, trained: set[int]) -> list[SampleRow]:
    """Samples of the version's datasets that did not train it (and still have their content)."""
    dataset_ids = list(
        session.scalars(
            select(TrainingSource.dataset_id).where(
                TrainingSource.root_version_id == version.training_root_id
            )
        )
    )
    rows = session.scalars(
        select(SampleRow)
        .where(SampleRow.dataset_id.in_(dataset_ids), SampleRow.erased_at.is_(None))
        .order_by(SampleRow.id)
    )
    return [row for row in rows if row.id not in trained and has_content(row)]


def heldout_rows(session: Session, version: ModelVersion, trained: set[int]) -> list[SampleRow]:
    """The samples verification and the methods may treat as never seen by `version`."""
    declared = list(session.scalars(heldout_sample_ids(version)))
    if not declared:
        return untrained_rows(session, version, trained)
    return [row for row in load_rows(session, declared) if row.id not in trained and has_content(row)]


def _subject_side(subject: str) -> int:
    return hashlib.sha256(subject.encode()).digest()[0] % 2


def split_by_subject(rows: Sequence[SampleRow]) -> tuple[list[SampleRow], list[SampleRow]]:
    """(validation, held-out): each subject wholly on one side; both sides non-empty when possible."""
    first = [row for row in rows if _subject_side(row.subject_hmac) == 0]
    second = [row for row in rows if _subject_side(row.subject_hmac) == 1]
    if not first or not second:  # one subject, or an unlucky hash: halve the list instead
        half = len(rows) // 2
        return list(rows[:half]), list(rows[half:])
    return first, second


@dataclass
class DataSets:
    """The engine-side sets of one deletion against one version."""

    forget: list[Sample]
    retain: list[Sample]
    validation: list[Sample]
    heldout: list[Sample]
    forget_ids: list[int]
    missing_content: int = 0  # training samples left out because their content is gone
    counts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "forget": len(self.forget),
            "retain": len(self.retain),
            "validation": len(self.validation),
            "heldout": len(self.heldout),
            "retain_without_content": self.missing_content,
        }


def build_sets(session: Session, version: ModelVersion, requested_ids: Iterable[int]) -> DataSets:
    """The sets for deleting `requested_ids` from `version` (ids it was not trained on are ignored)."""
    rows = training_rows(session, version)
    trained = {row.id for row in rows}
    wanted = set(requested_ids) & trained
    forget_rows = [row for row in rows if row.id in wanted]
    retain_rows = [row for row in rows if row.id not in wanted]
    usable_retain = [row for row in retain_rows if has_content(row)]
    validation_rows, heldout = split_by_subject(heldout_rows(session, version, trained))
    return DataSets(
        forget=[engine_sample(row) for row in forget_rows if has_content(row)],
        retain=[engine_sample(row) for row in usable_retain],
        validation=[engine_sample(row) for row in validation_rows],
        heldout=[engine_sample(row) for row in heldout],
        forget_ids=sorted(wanted),
        missing_content=len(retain_rows) - len(usable_retain),
    )
