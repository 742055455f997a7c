"""Promotion: the verified candidate starts serving, at most once whatever the broker redelivers.

Everything happens in ONE transaction on the locked job row: the claim, the compare-and-set of the alias
(app.registry.service.set_alias: history and audit), the taint of every version of the model trained on a
forgotten sample, the `model.promoted` webhook, the requests' completion and the job's end. A second
delivery of the task waits on the job row's lock and then finds the job past its promoting stage.

If the alias no longer points at the version the job unlearned (someone moved it meanwhile), the candidate
is stale: it is rejected and the job starts its chain again on the version that now serves.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from app.jobs.models import Job, JobKind, Stage
from app.jobs.params import UnlearnParams
from app.outbox.service import enqueue
from app.provenance.membership import versions_trained_on
from app.registry.models import Model, ModelVersion, VersionStatus
from app.registry.service import (
    AliasMoved,
    VersionNotPromotable,
    set_alias,
    set_version_status,
    taint_version,
)
from app.requests.lifecycle import move_models
from app.requests.models import ModelStatus
from app.webhooks.events import EventType
from app.webhooks.service import enqueue_event
from workers.pipeline.escalation import STALE, chain_position, current_attempt, finish_attempt
from workers.pipeline.jobs import (
    audit_job,
    claimed_job,
    enqueue_stage,
    job_requests,
    job_sample_ids,
    succeed_job,
)
from workers.pipeline.leases import lock_model, release_lease
from workers.pipeline.stages import ACTOR, PURGE_TASK

log = logging.getLogger("lethe.pipeline")


def run_promote(job_id: str) -> None:
    with claimed_job(job_id, JobKind.UNLEARN, {Stage.PROMOTING}) as claim:
        if claim is not None:
            promote(claim.session, claim.job, claim.token)


def promote(session: Session, job: Job, token: str) -> None:
    model = lock_model(session, job.model_id)
    job_requests(session, job, lock=True)  # lock order: job, model, requests, then the audit head
    params = UnlearnParams.of(job)
    candidate = session.get(ModelVersion, job.candidate_version_id)
    base = session.get(ModelVersion, params.base_version_id)
    assert candidate is not None and base is not None and params.alias is not None
    removed = len(job_sample_ids(session, job))
    reason = f"deletion job {job.id}: {candidate.method} removed {removed} samples"
    try:
        with session.begin_nested():
            set_alias(session, model, params.alias, candidate, params.alias_version, reason, ACTOR)
    except (AliasMoved, VersionNotPromotable) as refused:  # the candidate can no longer serve as planned
        _restart_on_new_served_version(session, job, candidate, token, refused.detail)
        return
    complete_deletion(session, job, model, base, candidate)


def _restart_on_new_served_version(
    session: Session, job: Job, candidate: ModelVersion, token: str, why: str
) -> None:
    log.warning("job %s: promotion refused (%s); unlearning again from the served version", job.id, why)
    attempt = current_attempt(session, job)
    if attempt is not None:
        finish_attempt(session, job, attempt, STALE, attempt.verdict, {"reason": why[:500]})
    set_version_status(session, candidate, VersionStatus.REJECTED, ACTOR, verification={
        **(candidate.verification or {}), "superseded": why[:500]})  # fmt: skip
    chain, index = chain_position(job)
    params = UnlearnParams.of(job)
    params.base_version_id = params.alias_version = None  # the next claim fixes them anew
    params.attempt_offset += index + 1
    params.chain_index = 0
    params.write(job)
    job.candidate_version_id = None
    job.stage = Stage.UNLEARNING
    detail = {"job_id": job.id, "reason": "the served version changed"}
    move_models(session, job, ModelStatus.UNLEARNING, actor=ACTOR, detail=detail)
    audit_job(session, job, "restarted", {"reason": why[:300], "chain": chain})
    release_lease(job, token)
    enqueue_stage(session, job)


def taint_trained_versions(session: Session, job: Job, sample_ids: list[int]) -> list[int]:
    """Mark every version of the job's model trained on any of the samples; answers their numbers."""
    tainted = []
    reason = f"trained on samples forgotten by deletion job {job.id}"
    hits = versions_trained_on(session, job.tenant_id, sample_ids=sample_ids) if sample_ids else []
    for version_id in sorted({hit.version_id for hit in hits if hit.model_id == job.model_id}):
        version = session.get(ModelVersion, version_id)
        assert version is not None
        if not version.tainted:
            taint_version(session, version, reason, ACTOR)
            tainted.append(version.version)
    return tainted


def complete_deletion(
    session: Session, job: Job, model: Model, base: ModelVersion, candidate: ModelVersion | None
) -> None:
    """The model serves a version without the job's samples (the candidate, or `base` when it never held
    them): taint the versions that did, complete the requests, end the job, schedule the purge."""
    serving = candidate or base
    tainted = taint_trained_versions(session, job, job_sample_ids(session, job))
    if candidate is not None:
        enqueue_event(
            session,
            job.tenant_id,
            EventType.MODEL_PROMOTED,
            {"model": model.name, "alias": UnlearnParams.of(job).alias, "from_version": base.version,
             "to_version": candidate.version, "method": candidate.method, "exact": candidate.exact,
             "job_id": job.id, "tainted_versions": tainted},
        )  # fmt: skip
    detail = {"job_id": job.id, "model": model.name, "version": serving.version}
    move_models(session, job, ModelStatus.COMPLETED, actor=ACTOR, detail=detail, to_version_id=serving.id)
    succeed_job(
        session,
        job,
        {"model": model.name, "from_version": base.version, "to_version": serving.version,
         "promoted": candidate is not None, "tainted_versions": tainted},
    )  # fmt: skip
    enqueue(session, PURGE_TASK, {"job_id": job.id})
