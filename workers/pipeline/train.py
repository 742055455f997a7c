"""Training through the service (POST /v1/models/{model}/versions:train): the `training` version the API
created is trained on its recorded training set with full provenance (subject-aligned block checkpoints,
first-epoch gradients), stored in the artifact store with its TrainingRecord beside it, and becomes a
`registered` version (promotable like any attested one).

What to train is the request's typed `params` over the model policy's `training` defaults
(app.registry.training_params.TrainingParams, merged by the API), which the job carries as `training`,
with the base the API resolved as `base` ({uri, sha256, format, from_scratch}):
- a base folder: the Hugging Face model (or torch classifier) it holds, fine-tuned in full or with LoRA,
  its tokenizer the base's own;
- an `architecture`: a torch classifier from scratch, input shape and classes read off the data;
- a `workload`: a reference workload's architecture and recipe.
`recipe` fields override the recipe in every case. A model fine-tuned from one of the model's own
versions is stored without a training record: that version's own training data is in its weights, so
restarting from its weights (what DeepObliviate and retraining would do) would not forget it.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from app.db import get_session_factory
from app.jobs.models import Job, JobKind, Stage
from app.jobs.params import TrainParams
from app.provenance.models import Dataset
from app.registry import artifacts as registry_artifacts
from app.registry.models import ModelVersion, VersionStatus
from app.registry.service import set_version_status
from workers.pipeline import artifacts, data, store
from workers.pipeline.jobs import audit_job, claimed_job, fail_job, held_job, succeed_job
from workers.pipeline.leases import Heartbeat, LeaseLost
from workers.pipeline.stages import ACTOR

log = logging.getLogger("lethe.pipeline")

TRAIN_PROGRESS = (5, 95)


class TrainingSpecError(ValueError):
    pass


def _num_classes(samples: Sequence[Any], label_map: Mapping[str, int] | None) -> int:
    labels = [s.label for s in samples if s.label is not None]
    largest = max([*(label_map or {}).values(), *labels], default=1)
    return max(2, int(largest) + 1)


def _classifier_config(
    architecture: Mapping[str, Any], samples: Sequence[Any], classes: int
) -> dict[str, Any]:
    import numpy as np

    kind = architecture.get("kind", "mlp")
    shape = architecture.get("input_shape") or list(np.shape(samples[0].features))
    config: dict[str, Any] = {"arch": kind, "input_shape": shape, "num_classes": classes}
    for key in ("hidden", "channels"):
        if architecture.get(key) is not None:
            config[key] = list(architecture[key])
    return config


def _from_base(base: Mapping[str, Any], spec: Mapping[str, Any], seed: int, classes: int) -> Any:
    """The adapter a fine-tuning starts from: the base folder's weights (or its architecture only)."""
    from workers.modeling.adapters import adapter_class
    from workers.modeling.formats import load_folder, local_folder

    folder = artifacts.base_of(str(base["uri"]), base.get("sha256"))
    directory = local_folder(folder["uri"], folder["sha256"])
    found = load_folder(directory, folder)  # the architecture as saved: what kind of adapter it is
    settings: dict[str, Any] = {"init_seed": seed}
    if found.kind in ("hf-causal-lm", "hf-sequence-classifier"):
        lora = spec.get("lora") or {} if spec.get("fine_tuning") == "lora" else None
        settings |= {"from_scratch": bool(base.get("from_scratch")), "lora": lora}
        if spec.get("max_length"):
            settings["max_length"] = int(spec["max_length"])
    elif found.kind == "torch-classifier":
        if found.config()["num_classes"] < classes:
            raise TrainingSpecError(
                f"the base classifier has {found.config()['num_classes']} classes, the data {classes}"
            )
        if base.get("from_scratch"):
            folder = None
    else:
        raise TrainingSpecError(
            f"fine-tuning starts from a Hugging Face or torch classifier folder, not {found.kind}"
        )
    config = {**found.config(), **settings, "base": folder}
    if config["base"] is None:
        config.pop("base")
    return adapter_class(found.kind).from_config(config)


def training_spec(
    spec: Mapping[str, Any],
    base: Mapping[str, Any] | None,
    samples: Sequence[Any],
    label_map: Mapping[str, int] | None = None,
) -> tuple[Any, Any]:
    """(the adapter to train, its TrainingRecipe) for a training job: the request's training params
    `spec` and the `base` the API resolved."""
    from workers.modeling.adapters import new_adapter
    from workers.modeling.training import TrainingRecipe

    overrides = {k: v for k, v in (spec.get("recipe") or {}).items() if v is not None}
    seed = int(overrides.get("seed", 0))
    classes = _num_classes(samples, label_map)
    recipe = TrainingRecipe()
    if spec.get("workload"):
        from workers.workloads import load_workload

        workload = load_workload(str(spec["workload"]), str(spec.get("size", "small")), seed)
        adapter = new_adapter(workload.adapter_kind, dict(workload.adapter_config))
        recipe = workload.recipe
    elif base:
        adapter = _from_base(base, spec, seed, classes)
    else:
        if not samples or samples[0].features is None:
            raise TrainingSpecError("a torch classifier trains on feature vectors; the samples have none")
        config = _classifier_config(spec.get("architecture") or {}, samples, classes)
        adapter = new_adapter("torch-classifier", {**config, "init_seed": seed})
    layout = spec.get("layout") or {}
    if layout.get("slices") is not None:
        overrides["num_blocks"] = int(layout["slices"])
    if int(layout.get("shards") or 1) > 1:
        from workers.modeling.adapters.sharded import ShardedAdapter

        if isinstance(adapter, ShardedAdapter):
            raise TrainingSpecError("params.layout: the base is sharded already; train it without a layout")
        adapter = ShardedAdapter.around(adapter, int(layout["shards"]))
    # Full provenance unless the request says otherwise: what exact and gradient-based unlearning need.
    fields = {"record_block_checkpoints": True, "record_first_epoch_grads": True, **overrides}
    return adapter, TrainingRecipe.from_dict({**recipe.to_dict(), **fields})


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
    from workers.modeling.training import train_with_provenance

    with get_session_factory()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        version = session.get(ModelVersion, job.candidate_version_id)
        assert version is not None
        params = TrainParams.of(job)
        rows = data.training_rows(session, version)
        base_version = session.get(ModelVersion, params.base_version_id) if params.base_version_id else None
        if base_version is not None:  # what the base learnt is in its weights already: train on the rest
            inherited = data.trained_ids(session, base_version)
            rows = [row for row in rows if row.id not in inherited]
        samples = [data.engine_sample(row) for row in rows if data.has_content(row)]
        dataset = session.get(Dataset, params.dataset_id) if params.dataset_id else None
        label_map = dataset.label_map if dataset is not None else None
    with Heartbeat(job_id, token) as heartbeat:
        heartbeat.progress(TRAIN_PROGRESS[0], force=True)
        workdir = store.scratch_directory(f"train-{job_id[:8]}")
        try:
            if len(samples) != len(rows):
                raise TrainingSpecError(
                    f"{len(rows) - len(samples)} samples of the training set have no content"
                )
            adapter, recipe = training_spec(params.requested(), params.base, samples, label_map)
            low, high = TRAIN_PROGRESS
            record = train_with_provenance(
                adapter, samples, recipe, workdir,
                progress=lambda fraction, _m: heartbeat.progress(low + (high - low) * fraction),
            )  # fmt: skip
            heartbeat.check()
            kept = record if base_version is None else None
            uri, sha = store.store_version(adapter, parent=None, method="train", record=kept)
            files = set(store.artifact_store().manifest(sha).files)
            if kept is None:
                shutil.rmtree(workdir, ignore_errors=True)
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
        "adapter_kind": adapter.kind,
        "provenance_recorded": kept is not None,
        "job_id": job_id,
    }
    with held_job(job_id, token) as (session, job):
        version = session.get(ModelVersion, job.candidate_version_id)
        assert version is not None
        set_version_status(
            session, version, VersionStatus.REGISTERED, ACTOR, artifact_uri=uri, artifact_sha256=sha,
            artifact_format=registry_artifacts.detect_format(files), training_fingerprint=record.fingerprint,
            metrics=metrics,
        )  # fmt: skip
        succeed_job(session, job, {"version": version.version, "artifact_uri": uri, **metrics})


def _failed(session: Any, job: Job, reason: str) -> None:
    version = session.get(ModelVersion, job.candidate_version_id) if job.candidate_version_id else None
    if version is not None and version.status == VersionStatus.TRAINING:
        set_version_status(
            session,
            version,
            VersionStatus.FAILED,
            ACTOR,
            metrics={"error": reason[:500]},
            status_reason=reason[:500],
        )
    fail_job(session, job, reason)
