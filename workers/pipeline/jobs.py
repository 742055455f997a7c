"""Job state shared by every stage: claiming a job, sending its next task, ending it, its requests and
samples.

A request's status follows its per-model rows: the stages move those rows through
app.requests.lifecycle (`move_models`), which brings each request of the job along.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import record
from app.db import get_session_factory, utcnow
from app.jobs.models import Job, JobKind, JobRequest, JobStatus, Stage
from app.outbox.service import enqueue
from app.requests.lifecycle import move_models, requests_of_job
from app.requests.models import DeletionRequest, DeletionRequestModel, DeletionRequestSample, ModelStatus
from workers.pipeline.leases import (
    AttemptsExhausted,
    ClaimRefused,
    check_holder,
    lease_delta,
    lock_job,
    new_token,
    take_lease,
)
from workers.pipeline.stages import ACTOR, task_for

log = logging.getLogger("lethe.pipeline")


# ------------------------------------------------------------------------------------------- claiming


@dataclass(frozen=True)
class Claim:
    """A job this task execution holds the lease of, in the transaction that claimed it."""

    session: Session
    job: Job
    token: str


@contextmanager
def claimed_job(
    job_id: str,
    kind: JobKind,
    stages: Container[str],
    *,
    may_claim: Callable[[Session, Job], bool] | None = None,
    fail: Callable[[Session, Job, str], None] | None = None,
) -> Iterator[Claim | None]:
    """The opening of every stage's task: lock the job and take its lease for a new token, in one
    transaction that commits when the block ends. Yields None when the job is not this task's to work
    on: gone, of another kind, at another stage, turned down by `may_claim` (which may write why), held
    by a live worker, or its runs spent (then failed by `fail`, by default fail_job)."""
    token = new_token()
    with get_session_factory()() as session, session.begin():
        yield _claim(session, job_id, token, kind, stages, may_claim, fail or fail_job)


def _claim(
    session: Session,
    job_id: str,
    token: str,
    kind: JobKind,
    stages: Container[str],
    may_claim: Callable[[Session, Job], bool] | None,
    fail: Callable[[Session, Job, str], None],
) -> Claim | None:
    job = lock_job(session, job_id)
    if job is None or job.kind != kind or job.stage not in stages:
        return None
    if may_claim is not None and not may_claim(session, job):
        return None
    try:
        take_lease(job, token)
    except ClaimRefused as refused:
        log.info("%s", refused)
        return None
    except AttemptsExhausted as exhausted:
        fail(session, job, f"worker lost too often: {exhausted}")
        return None
    return Claim(session, job, token)


@contextmanager
def held_job(job_id: str, token: str) -> Iterator[tuple[Session, Job]]:
    """A later transaction of a task that claimed the job: the job locked, still held by `token`
    (LeaseLost otherwise, and nothing is written)."""
    with get_session_factory()() as session, session.begin():
        job = lock_job(session, job_id)
        assert job is not None, f"job {job_id} is gone"
        check_holder(job, token)
        yield session, job


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
    return requests_of_job(session, job.id, lock=lock)


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
                .where(JobRequest.job_id == job.id, DeletionRequestModel.status != ModelStatus.CANCELED)
            )
        )
    )


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
        detail = {"reason": reason, "job_id": job.id}
        move_models(session, job, ModelStatus.FAILED, actor=ACTOR, detail=detail)
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
