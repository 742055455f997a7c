"""Job and request state shared by every stage: sending a job's next task, ending a job, and keeping each
deletion request's status in step with the progress of its models.

A request's status follows its per-model rows (deletion_request_models): it is the least advanced of its
open models (queued < unlearning < verifying), `failed` as soon as one model's escalation chain is spent,
and `completed` once every model it concerns serves a version without its samples.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import record
from app.certificates.service import issue_certificate
from app.db import utcnow
from app.jobs.models import Job, JobKind, JobRequest, JobStatus
from app.outbox.service import enqueue
from app.requests.models import (
    OPEN_STATUSES,
    DeletionRequest,
    DeletionRequestModel,
    DeletionRequestSample,
    RequestStatus,
)
from app.requests.service import MODEL_PENDING, InvalidTransition, change_status
from workers.pipeline.leases import for_update, lease_delta
from workers.pipeline.stages import ACTOR, Stage, task_for

log = logging.getLogger("lethe.pipeline")

S = RequestStatus
# Per-model row states, in the order a model moves through them (MODEL_PENDING, written at intake, counts
# as the request's `resolved`).
MODEL_OPEN_ORDER = (S.RESOLVED, S.QUEUED, S.UNLEARNING, S.VERIFYING)
MODEL_DONE = (S.COMPLETED, S.CANCELED)


def enqueue_stage(session: Session, job: Job) -> None:
    """Send the task of the job's stage (through the outbox: it leaves after commit)."""
    task = task_for(job)
    if task is not None:
        enqueue(session, *task)


def audit_job(session: Session, job: Job, action: str, data: dict[str, Any]) -> None:
    record(session, job.tenant_id, "job", job.id, f"job.{action}", {"kind": job.kind, **data}, ACTOR)


# ------------------------------------------------------------------------------------------- requests


def job_requests(session: Session, job: Job, *, lock: bool = False) -> list[DeletionRequest]:
    """The job's requests, ordered by id (the lock order every stage uses)."""
    stmt = (
        select(DeletionRequest)
        .join(JobRequest, JobRequest.request_id == DeletionRequest.id)
        .where(JobRequest.job_id == job.id)
        .order_by(DeletionRequest.id)
    )
    return list(session.scalars(for_update(stmt) if lock else stmt))


def job_sample_ids(session: Session, job: Job) -> list[int]:
    """Samples of the job's requests that are still to be forgotten from its model (canceled ones not)."""
    return sorted(
        set(
            session.scalars(
                select(DeletionRequestSample.sample_id)
                .join(JobRequest, JobRequest.request_id == DeletionRequestSample.request_id)
                .join(
                    DeletionRequestModel,
                    (DeletionRequestModel.request_id == DeletionRequestSample.request_id)
                    & (DeletionRequestModel.model_id == job.model_id),
                )
                .where(JobRequest.job_id == job.id, DeletionRequestModel.status != RequestStatus.CANCELED)
            )
        )
    )


def model_rows(session: Session, job: Job) -> list[DeletionRequestModel]:
    return list(
        session.scalars(
            select(DeletionRequestModel).where(
                DeletionRequestModel.job_id == job.id, DeletionRequestModel.model_id == job.model_id
            )
        )
    )


def set_model_rows(session: Session, job: Job, status: str, **columns: Any) -> None:
    """Move the job's per-model rows (not the canceled ones) to `status`."""
    for row in model_rows(session, job):
        if row.status == S.CANCELED:
            continue
        row.status = status
        for name, value in columns.items():
            setattr(row, name, value)


def _target_status(statuses: Iterable[str]) -> str:
    statuses = list(statuses)
    if not statuses:  # no model holds the samples: only Lethe's store does, and the purge erases them
        return S.COMPLETED
    if S.FAILED in statuses:
        return S.FAILED
    if all(status in MODEL_DONE for status in statuses):
        return S.COMPLETED if S.COMPLETED in statuses else S.CANCELED
    open_ranks = [
        MODEL_OPEN_ORDER.index(S.RESOLVED if status == MODEL_PENDING else status)
        for status in statuses
        if status not in MODEL_DONE
    ]
    return MODEL_OPEN_ORDER[min(open_ranks)]


def sync_request(session: Session, request: DeletionRequest, detail: dict[str, Any] | None = None) -> None:
    """Bring the request's status in line with its per-model rows (timeline, audit and webhooks through
    app.requests.service.change_status). A closed request is left alone."""
    if request.status not in OPEN_STATUSES:
        return
    statuses = session.scalars(
        select(DeletionRequestModel.status).where(DeletionRequestModel.request_id == request.id)
    )
    target = _target_status(statuses)
    if target == request.status or target == S.CANCELED:
        return
    try:
        change_status(session, request, target, actor=ACTOR, detail=detail)
    except InvalidTransition:
        # e.g. queued -> verifying for a request whose other model was faster: pass through unlearning
        change_status(session, request, S.UNLEARNING, actor=ACTOR)
        change_status(session, request, target, actor=ACTOR, detail=detail)
    if target == S.COMPLETED:
        issue_certificate(session, request, actor=ACTOR)


def sync_requests(session: Session, job: Job, detail: dict[str, Any] | None = None) -> None:
    for request in job_requests(session, job, lock=True):
        sync_request(session, request, detail)


# ----------------------------------------------------------------------------------------------- jobs


def _close(job: Job, status: JobStatus, error: str | None = None) -> None:
    now = utcnow()
    job.status = status
    job.stage = Stage.DONE
    job.finished_at = now
    job.lease_owner = None
    job.lease_expires_at = None
    if error is not None:
        job.error = error[:2000]
    if status == JobStatus.SUCCEEDED:
        job.progress = 100


def fail_job(session: Session, job: Job, reason: str) -> None:
    """The job is over without a new version: requests fail loudly, the old version keeps serving."""
    log.error("job %s (model %s) failed: %s", job.id, job.model_id, reason)
    _close(job, JobStatus.FAILED, reason)
    if job.kind == JobKind.UNLEARN:
        set_model_rows(session, job, S.FAILED)
        sync_requests(session, job, {"reason": reason, "job_id": job.id})
    audit_job(session, job, "failed", {"reason": reason, "attempts": job.attempts})
    start_next_job(session, job.model_id)


def cancel_job(session: Session, job: Job, reason: str) -> None:
    _close(job, JobStatus.CANCELED, reason)
    audit_job(session, job, "canceled", {"reason": reason})
    start_next_job(session, job.model_id)


def succeed_job(session: Session, job: Job, data: dict[str, Any]) -> None:
    _close(job, JobStatus.SUCCEEDED)
    audit_job(session, job, "succeeded", data)
    if job.kind == JobKind.UNLEARN:
        start_next_job(session, job.model_id)


def running_unlearn_job(session: Session, model_id: str, other_than: str) -> Job | None:
    """The job that holds the model's unlearning lock (one running unlearn job per model)."""
    return session.scalars(
        select(Job).where(
            Job.model_id == model_id,
            Job.kind == JobKind.UNLEARN,
            Job.status == JobStatus.RUNNING,
            Job.id != other_than,
        )
    ).first()


def start_next_job(session: Session, model_id: str) -> None:
    """The model is free again: send the oldest job waiting for it."""
    waiting = session.scalars(
        select(Job)
        .where(Job.model_id == model_id, Job.kind == JobKind.UNLEARN, Job.status == JobStatus.QUEUED)
        .order_by(Job.created_at, Job.id)
        .limit(1)
    ).first()
    if waiting is not None:
        waiting.lease_expires_at = utcnow() + lease_delta()
        enqueue_stage(session, waiting)
