"""Registered artifacts on the workers: where their files are, loading them, and the load check that lets a
registered version serve.

Registration (app.registry) recognised the files and hashed them; a worker then loads the model once and
scores a few of its training samples (`check_artifact`, task lethe.check_artifact): the version moves from
`checking` to `registered`, or to `failed` with the reason in `status_reason`. It never serves otherwise.
Every later load checks the files against the registered sha256 again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from app.db import get_session_factory
from app.registry import artifacts
from app.registry.models import ModelVersion, VersionStatus
from app.registry.service import set_version_status
from workers.pipeline import data
from workers.pipeline.stages import ACTOR

if TYPE_CHECKING:
    from workers.modeling.base import ModelAdapter

log = logging.getLogger("lethe.pipeline")

CHECKED_SAMPLES = 16
MAX_REASON = 2000


def engine_uri(uri: str) -> str:
    """The registered URI as the engine opens it: an absolute local path, or a full fsspec URL."""
    location = artifacts.locate(uri)
    protocol = location.fs.protocol
    if "file" in (protocol if isinstance(protocol, tuple | list) else (protocol,)):
        return location.root
    return location.fs.unstrip_protocol(location.root)


def base_of(uri: str, sha256: str | None) -> dict[str, Any]:
    """The {uri, sha256} an adapter config names a folder by."""
    return {"uri": engine_uri(uri), "sha256": sha256}


def load_registered(version: ModelVersion) -> ModelAdapter:
    """A version registered from files outside the artifact store, its files checked against its sha256."""
    from workers.modeling.formats import load_folder, local_folder

    if not version.artifact_uri:
        raise FileNotFoundError(f"version {version.version} has no artifact")
    base = base_of(version.artifact_uri, version.artifact_sha256)
    return load_folder(local_folder(base["uri"], base["sha256"]), base)


def _probe(adapter: ModelAdapter, version: ModelVersion) -> None:
    """Score a few training samples: the model must take this data (feature shape, labels, tokenizer)."""
    with get_session_factory()() as session:
        rows = data.training_rows(session, version)[:CHECKED_SAMPLES]
        samples = [data.engine_sample(row) for row in rows if data.has_content(row)]
    if not samples:
        return
    num_labels = adapter.config().get("num_labels") or adapter.config().get("num_classes")
    labels = [s.label for s in samples if s.label is not None]
    if num_labels is not None and labels and max(labels) >= int(num_labels):
        raise ValueError(f"the training set has label {max(labels)}, the model only {num_labels} classes")
    losses = adapter.per_sample_loss(samples)
    if not np.all(np.isfinite(losses)):
        raise ValueError("the model's loss on its training samples is not finite")


def check_artifact(version_id: str) -> None:
    """Load a `checking` version once; it becomes `registered` (may serve) or `failed` (with the reason)."""
    with get_session_factory()() as session:
        version = session.get(ModelVersion, version_id)
        if version is None or version.status != VersionStatus.CHECKING:
            return  # checked already (a redelivered message), or gone
    try:
        _probe(load_registered(version), version)
    except Exception as exc:  # whatever fails to load must not serve; the reason goes to the caller
        log.info("version %s: artifact check failed: %s", version_id, exc)
        status, reason = VersionStatus.FAILED, f"the artifact did not load: {type(exc).__name__}: {exc}"
    else:
        status, reason = VersionStatus.REGISTERED, None
    with get_session_factory()() as session, session.begin():
        version = session.get(ModelVersion, version_id, with_for_update=True)
        if version is None or version.status != VersionStatus.CHECKING:
            return
        set_version_status(
            session, version, status, ACTOR, status_reason=reason[:MAX_REASON] if reason else None
        )
