"""Training through the service (POST /v1/models/{model}/versions:train): the `training` version the API
created is trained on its recorded training set with full provenance (subject-aligned block checkpoints,
first-epoch gradients), stored in the artifact store with its TrainingRecord beside it, and becomes a
`registered` version (promotable like any attested one).

What to train comes from the job's params (the request's `params`) over the model policy's `training`:
either `{"workload": "digits", "size": "small"}` (a reference workload's architecture and recipe) or
`{"adapter_kind": ..., "adapter_config": {...}}`; `recipe` overrides recipe fields in both cases.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from typing import Any

from app.db import get_session_factory
from app.jobs.models import Job, JobKind, Stage
from app.jobs.params import TrainParams
from app.registry.models import Model, ModelVersion, VersionStatus
from app.registry.service import set_version_status
from workers.pipeline import data, store
from workers.pipeline.jobs import audit_job, claimed_job, fail_job, held_job, succeed_job
from workers.pipeline.leases import Heartbeat, LeaseLost
from workers.pipeline.stages import ACTOR

log = logging.getLogger("lethe.pipeline")

TRAIN_PROGRESS = (5, 95)


class TrainingSpecError(ValueError):
    pass


def training_spec(params: Mapping[str, Any], policy: Mapping[str, Any]) -> tuple[str, dict[str, Any], Any]:
    """(adapter kind, adapter config, TrainingRecipe) for a training job."""
    from workers.modeling.training import TrainingRecipe

    spec = {**(policy.get("training") or {}), **params}
    if spec.get("workload"):
        from workers.workloads import load_workload

        workload = load_workload(
            str(spec["workload"]), str(spec.get("size", "small")), int(spec.get("seed", 0))
        )
        kind, config, recipe = workload.adapter_kind, dict(workload.adapter_config), workload.recipe
    elif spec.get("adapter_kind"):
        kind, config, recipe = str(spec["adapter_kind"]), {}, TrainingRecipe()
    else:
        raise TrainingSpecError(
            "say what to train: params {workload: ...} or {adapter_kind: ..., adapter_config: {...}}"
        )
    config.update(spec.get("adapter_config") or {})
    # Full provenance unless the request says otherwise: what exact and gradient-based unlearning need.
    recipe_fields = {
        "record_block_checkpoints": True,
        "record_first_epoch_grads": True,
        **(spec.get("recipe") or {}),
    }
    return kind, config, TrainingRecipe.from_dict({**recipe.to_dict(), **recipe_fields})


def run_train(job_id: str) -> None:
    with claimed_job(job_id, JobKind.TRAIN, {Stage.QUEUED, Stage.TRAINING}, fail=_failed) as claim:
        if claim is None:
            return
        claim.job.stage = Stage.TRAINING
        audit_job(claim.session, claim.job, "started", {"version_id": claim.job.candidate_version_id})
        token = claim.token
    try:
        _train(job_id, token)
    except LeaseLost:
        log.warning("job %s: lost its lease during training; the new holder carries on", job_id)


def _train(job_id: str, token: str) -> None:
    from workers.modeling.adapters import new_adapter
    from workers.modeling.training import train_with_provenance

    with get_session_factory()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        version = session.get(ModelVersion, job.candidate_version_id)
        model = session.get(Model, job.model_id)
        assert version is not None and model is not None
        rows = data.training_rows(session, version)
        samples = [data.engine_sample(row) for row in rows if data.has_content(row)]
        params, policy = TrainParams.of(job).requested(), dict(model.policy or {})
    with Heartbeat(job_id, token) as heartbeat:
        heartbeat.progress(TRAIN_PROGRESS[0], force=True)
        workdir = store.scratch_directory(f"train-{job_id[:8]}")
        try:
            if len(samples) != len(rows):
                raise TrainingSpecError(
                    f"{len(rows) - len(samples)} samples of the training set have no content"
                )
            kind, config, recipe = training_spec(params, policy)
            adapter = new_adapter(kind, config)
            low, high = TRAIN_PROGRESS
            record = train_with_provenance(
                adapter, samples, recipe, workdir,
                progress=lambda fraction, _m: heartbeat.progress(low + (high - low) * fraction),
            )  # fmt: skip
            heartbeat.check()
            uri, sha = store.store_version(adapter, parent=None, method="train", record=record)
        except LeaseLost:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        except Exception as exc:
            log.exception("job %s: training failed", job_id)
            shutil.rmtree(workdir, ignore_errors=True)
            with held_job(job_id, token) as (session, job):
                _failed(session, job, f"{type(exc).__name__}: {exc}")
            return
    metrics = {
        "training_seconds": round(float(record.timings.get("total_seconds", 0.0)), 3),
        "final_block_loss": record.block_losses[-1] if record.block_losses else None,
        "samples": len(samples),
        "blocks": record.num_blocks,
        "adapter_kind": kind,
        "job_id": job_id,
    }
    with held_job(job_id, token) as (session, job):
        version = session.get(ModelVersion, job.candidate_version_id)
        assert version is not None
        set_version_status(
            session, version, VersionStatus.REGISTERED, ACTOR, artifact_uri=uri, artifact_sha256=sha,
            training_fingerprint=record.fingerprint, metrics=metrics,
        )  # fmt: skip
        succeed_job(session, job, {"version": version.version, "artifact_uri": uri, **metrics})


def _failed(session: Any, job: Job, reason: str) -> None:
    version = session.get(ModelVersion, job.candidate_version_id) if job.candidate_version_id else None
    if version is not None and version.status == VersionStatus.TRAINING:
        set_version_status(session, version, VersionStatus.FAILED, ACTOR, metrics={"error": reason[:500]})
    fail_job(session, job, reason)
