"""Where versions live on disk: the artifact store and the training records kept beside it.

A version the workers wrote has `artifact_uri = artifact://<id>`, `<id>` being its content id in the
artifact store under `settings.artifact_root`; its TrainingRecord (block checkpoints, first-epoch
gradients, block layout) sits in `<artifact_root>/records/<id>/`. A registered version may also point at a
folder of its own (workers.pipeline.artifacts: under the models root, or an fsspec URL); it has no record.

Verification's reference models for a served version sit in `<artifact_root>/verification/<id>/`.

Purging a tainted version removes its weights, its reference models, and the parts of its record that
carry what it learnt (checkpoints, gradients, final model) and keeps `record.json` (recipe, architecture,
block layout of sample ids): that is what a later exact retrain of the lineage needs, and it holds no
sample content.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from app.registry.artifacts import ARTIFACT_SCHEME, store_artifact_id
from app.registry.models import ModelVersion
from app.settings import get_settings

if TYPE_CHECKING:
    from workers.modeling.artifacts import ArtifactStore
    from workers.modeling.base import ModelAdapter
    from workers.modeling.training import TrainingRecord

log = logging.getLogger("lethe.pipeline")

RECORDS_DIR = "records"
VERIFICATION_DIR = "verification"
RECORD_FILE = "record.json"
# What a purge removes from a record directory (names from workers.modeling.training).
LEARNT_PARTS = ("checkpoints", "model", "first_epoch_grads.safetensors")
SHARDS_DIR = "shards"


def artifact_store() -> ArtifactStore:
    from workers.modeling.artifacts import ArtifactStore

    return ArtifactStore(get_settings().artifact_root)


def artifact_uri(artifact_id: str) -> str:
    return f"{ARTIFACT_SCHEME}://{artifact_id}"


def artifact_id(uri: str | None) -> str | None:
    """The artifact-store id of a version the workers wrote; None for other URIs."""
    return store_artifact_id(uri)


def records_root() -> Path:
    return Path(get_settings().artifact_root) / RECORDS_DIR


def record_directory(artifact: str) -> Path:
    return records_root() / artifact


def verification_cache(version: ModelVersion) -> Path:
    """Where verification keeps what it derives from a served version (LiRA reference models trained on
    halves of its training set): purged with the version, since they learnt the same samples."""
    return (
        Path(get_settings().artifact_root)
        / VERIFICATION_DIR
        / (artifact_id(version.artifact_uri) or version.id)
    )


def scratch_directory(label: str) -> Path:
    """A fresh directory under the records root, for a run whose artifact id is not known yet."""
    path = records_root() / f".tmp-{label}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_adapter_of(version: ModelVersion) -> ModelAdapter:
    """The version's model, its files checked (against the store's manifest, or the registered sha256)."""
    from workers.pipeline.artifacts import load_registered

    stored = artifact_id(version.artifact_uri)
    if stored is not None:
        adapter, _ = artifact_store().load(stored)
        return adapter
    return load_registered(version)


def own_record(version: ModelVersion) -> TrainingRecord | None:
    """The TrainingRecord of the run that produced this very version, if the workers have one."""
    from workers.modeling.training import TrainingRecord

    stored = artifact_id(version.artifact_uri)
    if stored is None or not (record_directory(stored) / RECORD_FILE).is_file():
        return None
    return TrainingRecord.load(record_directory(stored))


def lineage_record(session: Session, version: ModelVersion) -> tuple[ModelVersion, TrainingRecord] | None:
    """The nearest version of the lineage (this one, its parent, ...) with a training record."""
    current: ModelVersion | None = version
    while current is not None:
        found = own_record(current)
        if found is not None:
            return current, found
        current = session.get(ModelVersion, current.parent_id) if current.parent_id else None
    return None


def store_version(
    adapter: ModelAdapter,
    *,
    parent: ModelVersion | None,
    method: str,
    record: TrainingRecord | None = None,
    metrics: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Put the model in the artifact store (and its record beside it); answers (artifact_uri, sha256)."""
    manifest = artifact_store().put(
        adapter,
        parent=artifact_id(parent.artifact_uri) if parent is not None else None,
        training_fingerprint=record.fingerprint if record is not None else None,
        method=method,
        metrics=metrics,
    )
    if record is not None:
        _keep_record(Path(record.directory), manifest.version_id)
    return artifact_uri(manifest.version_id), manifest.version_id


def _keep_record(source: Path, artifact: str) -> None:
    target = record_directory(artifact)
    if source.resolve() == target.resolve():
        return
    if (target / RECORD_FILE).is_file():  # the same weights were stored before, with their record
        shutil.rmtree(source, ignore_errors=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(source), str(target))


def purge_files(version: ModelVersion, shared: bool) -> list[str]:
    """Remove what the version learnt from disk; answers what was removed. `shared`: another live version
    has the same weights (same content id), so the weights stay."""
    removed: list[str] = []
    references = verification_cache(version)
    if not shared and references.is_dir():
        shutil.rmtree(references)
        removed.append("verification references")
    stored = artifact_id(version.artifact_uri)
    if stored is None:
        return removed  # registered elsewhere: the registrant owns those files
    store = artifact_store()
    if not shared and store.exists(stored):
        store.delete(stored)
        removed.append("weights")
    directory = record_directory(stored)
    if not shared and directory.is_dir():
        # a sharded version's members keep their own checkpoints and models (shards/<s>/)
        for folder in [directory, *sorted(p for p in (directory / SHARDS_DIR).glob("*") if p.is_dir())]:
            for name in LEARNT_PARTS:
                path = folder / name
                label = str(path.relative_to(directory))
                if path.is_dir():
                    shutil.rmtree(path)
                    removed.append(label)
                elif path.is_file():
                    path.unlink()
                    removed.append(label)
    return removed
