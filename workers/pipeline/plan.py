"""Planning: put a resolved request into the open job of each model it affects (the batch).

A model has at most one open batch: a queued unlearn job no worker has claimed yet. A request joins it,
or starts a new one that no worker claims before the batching window (`settings.batching_window_seconds`)
has closed, so that requests arriving meanwhile join too. Once a worker claims the job the batch is
frozen; later requests start the next batch. One short transaction per model, taking the model row's lock
first: the same lock the claim takes, so a request joins a batch either before it is frozen or not at all.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import for_update, get_session_factory, utcnow
from app.jobs.models import Job, JobKind, JobRequest, JobStatus, Stage
from app.jobs.params import UnlearnParams
from app.outbox.service import enqueue
from app.registry.models import Model
from app.requests.lifecycle import PLANNABLE, join_job, sync_request
from app.requests.models import DeletionRequest, DeletionRequestModel, ModelStatus, RequestStatus
from app.settings import get_settings
from workers.pipeline.jobs import audit_job, enqueue_stage
from workers.pipeline.leases import lease_delta, lock_model
from workers.pipeline.stages import ACTOR, PURGE_TASK

log = logging.getLogger("lethe.pipeline")


def plan_request(request_id: str) -> list[str]:
    """Batch every unplanned model of the request; answers the ids of the jobs it joined. Idempotent:
    a model already planned (its row has a job) is skipped."""
    factory = get_session_factory()
    with factory() as session:
        model_ids = list(
            session.scalars(
                select(DeletionRequestModel.model_id)
                .where(
                    DeletionRequestModel.request_id == request_id,
                    DeletionRequestModel.status == ModelStatus.PENDING,
                    DeletionRequestModel.job_id.is_(None),
                )
                .order_by(DeletionRequestModel.model_id)
            )
        )
    joined = []
    for model_id in model_ids:
        with factory() as session, session.begin():
            job_id = _plan_one(session, request_id, model_id)
        if job_id is not None:
            joined.append(job_id)
    if not model_ids:
        with factory() as session, session.begin():
            _complete_without_models(session, request_id)
    return joined


def _complete_without_models(session: Session, request_id: str) -> None:
    """Samples held only in Lethe's store (no model trained on them): the request completes at once and
    the purge erases their content."""
    request = session.scalars(
        for_update(select(DeletionRequest).where(DeletionRequest.id == request_id))
    ).one_or_none()
    if request is None or request.status != RequestStatus.RESOLVED:
        return
    if session.scalar(
        select(DeletionRequestModel.model_id).where(DeletionRequestModel.request_id == request_id).limit(1)
    ):
        return
    sync_request(session, request, actor=ACTOR, detail={"reason": "no model was trained on the samples"})
    enqueue(session, PURGE_TASK, {})


def _plan_one(session: Session, request_id: str, model_id: str) -> str | None:
    model = lock_model(session, model_id)
    request = session.scalars(
        for_update(select(DeletionRequest).where(DeletionRequest.id == request_id))
    ).one_or_none()
    row = session.get(DeletionRequestModel, (request_id, model_id))
    if request is None or row is None or request.status not in PLANNABLE:
        return None  # canceled, no longer open, or gone
    if row.job_id is not None or row.status != ModelStatus.PENDING:
        return row.job_id  # planned by an earlier delivery of this task
    job = _open_batch(session, model, request.method) or _new_batch(session, model, request.method)
    session.add(JobRequest(job_id=job.id, request_id=request.id))
    join_job(session, request, row, job.id, actor=ACTOR)
    return job.id


def _open_batch(session: Session, model: Model, method: str) -> Job | None:
    """The model's queued job that no worker has claimed, for the same requested method."""
    candidates = session.scalars(
        select(Job)
        .where(
            Job.model_id == model.id,
            Job.kind == JobKind.UNLEARN,
            Job.status == JobStatus.QUEUED,
            Job.attempts == 0,
        )
        .order_by(Job.created_at)
    )
    return next((job for job in candidates if UnlearnParams.of(job).requested_method == method), None)


def _new_batch(session: Session, model: Model, method: str) -> Job:
    settings = get_settings()
    now = utcnow()
    not_before = now + timedelta(seconds=settings.batching_window_seconds)
    job = Job(
        tenant_id=model.tenant_id,
        model_id=model.id,
        kind=JobKind.UNLEARN,
        status=JobStatus.QUEUED,
        stage=Stage.QUEUED,
        max_attempts=settings.job_max_attempts,
        # The sweeper re-sends the task if no worker claimed the job by then (message lost).
        lease_expires_at=not_before + lease_delta(),
    )
    UnlearnParams(requested_method=method, not_before=not_before).write(job)
    session.add(job)
    session.flush()
    enqueue_stage(session, job)
    audit_job(session, job, "created", {"model": model.name, "requested_method": method})
    log.info("job %s: new batch for model %s", job.id, model.name)
    return job
