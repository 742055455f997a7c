"""What a training request (POST /v1/models/{model}/versions:train) must fit before a job is queued: the
data the model's task learns from, and the base a fine-tuning starts from, resolved to the files the
workers will open ({uri, sha256, format, from_scratch})."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import unprocessable
from app.provenance.membership import TrainingSet
from app.provenance.models import Dataset, DatasetKind, Sample
from app.registry import artifacts
from app.registry.models import ArtifactFormat, ModelTask, ModelVersion
from app.registry.schemas import TrainingParams

# Which kind of dataset each task trains on, and whether its samples must carry features (else text).
TASK_DATA: dict[ModelTask, tuple[DatasetKind, bool]] = {
    ModelTask.CAUSAL_LM: (DatasetKind.TEXT, False),
    ModelTask.SEQUENCE_CLASSIFICATION: (DatasetKind.CLASSIFICATION, False),
    ModelTask.IMAGE_CLASSIFICATION: (DatasetKind.CLASSIFICATION, True),
    ModelTask.TABULAR_CLASSIFICATION: (DatasetKind.CLASSIFICATION, True),
}
WORKLOAD_TASKS = {
    "digits": ModelTask.IMAGE_CLASSIFICATION,
    "bios": ModelTask.CAUSAL_LM,
    "minilm": ModelTask.SEQUENCE_CLASSIFICATION,
}
TEXT_TASKS = frozenset({ModelTask.CAUSAL_LM, ModelTask.SEQUENCE_CLASSIFICATION})


def check_training_data(session: Session, task: ModelTask, training_set: TrainingSet) -> None:
    """The training set is of the kind the task learns from (text, or feature vectors with labels)."""
    dataset = session.get(Dataset, training_set.dataset_id)
    assert dataset is not None
    kind, needs_features = TASK_DATA[task]
    if dataset.kind != kind:
        raise unprocessable(
            f"training_set.dataset: a {task} model trains on a {kind} dataset, not a {dataset.kind} one",
            "dataset-task-mismatch",
        )
    if dataset.kind != DatasetKind.CLASSIFICATION:
        return
    lacking = Sample.features.is_(None) if needs_features else Sample.text.is_(None)
    stmt = select(Sample.external_id).where(Sample.dataset_id == dataset.id, lacking)
    stmt = stmt.where(Sample.id <= training_set.upto_sample_id)
    if training_set.listed_sample_ids is not None:
        stmt = stmt.where(Sample.id.in_(training_set.listed_sample_ids))
    unusable = session.scalars(stmt.limit(1)).first()
    if unusable is not None:
        needed = "features" if needs_features else "text"
        raise unprocessable(
            f"training_set: sample {unusable!r} has no {needed}, which a {task} model learns from",
            "dataset-task-mismatch",
        )


def resolve_base(
    task: ModelTask, params: TrainingParams, base_version: ModelVersion | None
) -> dict[str, Any] | None:
    """The base a training job starts from, as the job carries it ({uri, sha256, format, from_scratch});
    `base_version` is the version `params.base.version` names. 422 when the request cannot train this
    task."""
    if params.workload is not None:
        if WORKLOAD_TASKS[params.workload] != task:
            raise unprocessable(
                f"params.workload: {params.workload} trains a {WORKLOAD_TASKS[params.workload]} model, "
                f"not {task}",
                "training-spec-invalid",
            )
        return None
    if params.base is None:
        if task in TEXT_TASKS:
            raise unprocessable(
                f"params.base: a {task} model is fine-tuned from a base (a Hugging Face save_pretrained "
                "folder under the models root, or a version of this model); its tokenizer comes from there",
                "training-spec-invalid",
            )
        return None
    if params.architecture is not None:
        raise unprocessable("params: give base or architecture, not both", "training-spec-invalid")
    if base_version is not None:
        if not base_version.promotable or not base_version.artifact_uri:
            raise unprocessable(
                f"params.base.version: version {base_version.version} cannot serve "
                f"(status {base_version.status}{', tainted' if base_version.tainted else ''})",
                "training-spec-invalid",
            )
        uri, sha256 = base_version.artifact_uri, base_version.artifact_sha256
        fmt = base_version.artifact_format or ArtifactFormat.LETHE
    else:
        assert params.base.path is not None
        info = artifacts.inspect_artifact(params.base.path, task)
        uri, sha256, fmt = params.base.path, info.sha256, info.format
    if params.fine_tuning == "lora" and fmt != ArtifactFormat.HUGGINGFACE:
        raise unprocessable("params.fine_tuning: lora needs a Hugging Face base", "training-spec-invalid")
    return {"uri": uri, "sha256": sha256, "format": str(fmt), "from_scratch": params.base.from_scratch}
