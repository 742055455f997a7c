"""The sweeper: Postgres says what should be happening; the sweeper makes sure a message for it exists.

Each pass (the worker's housekeeping thread every `sweep_interval_seconds`, or the `lethe.sweep` task):
- jobs whose lease expired: the worker holding it was lost, or the message for the job's next stage never
  arrived (Redis lost it). The stage's task is sent again; the next claim takes over. A job whose runs were
  all lost (`attempts` reached `max_attempts`) fails instead, loudly.
- requests resolved but never planned (their plan message was lost): planned again.
- webhook deliveries whose retry is due (or whose first message was lost): sent again.
- purges that came due after the grace period.
Several workers may sweep at once: rows are taken with SKIP LOCKED and every task is idempotent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.db import for_update, get_session_factory, utcnow
from app.jobs.models import Job, JobStatus
from app.jobs.params import params_of
from app.outbox.service import enqueue
from app.requests.lifecycle import plan_task_payload
from app.requests.models import DeletionRequest, DeletionRequestModel, ModelStatus, RequestStatus
from app.settings import get_settings
from app.webhooks.models import DeliveryStatus, WebhookDelivery
from workers.pipeline.jobs import enqueue_stage, fail_job
from workers.pipeline.leases import lease_delta
from workers.pipeline.purge import run_purge
from workers.pipeline.stages import DELIVER_WEBHOOK_TASK, PLAN_TASK

log = logging.getLogger("lethe.sweeper")

BATCH = 100


@dataclass
class SweepResult:
    redispatched_jobs: list[str] = field(default_factory=list)
    failed_jobs: list[str] = field(default_factory=list)
    replanned_requests: list[str] = field(default_factory=list)
    webhook_retries: int = 0
    purged_versions: int = 0
    erased_samples: int = 0

    def __bool__(self) -> bool:
        return any(
            (self.redispatched_jobs, self.failed_jobs, self.replanned_requests, self.webhook_retries,
             self.purged_versions, self.erased_samples)
        )  # fmt: skip


def sweep(now: datetime | None = None) -> SweepResult:
    now = now or utcnow()
    result = SweepResult()
    factory = get_session_factory()
    with factory() as session, session.begin():
        resend_expired_jobs(session, now, result)
    with factory() as session, session.begin():
        replan_lost_requests(session, now, result)
    with factory() as session, session.begin():
        resend_due_webhooks(session, now, result)
    purged = run_purge(None, now)
    result.purged_versions, result.erased_samples = len(purged.purged_versions), purged.erased_samples
    if result:
        log.info("sweep: %s", result)
    return result


def resend_expired_jobs(session: Session, now: datetime, result: SweepResult) -> None:
    jobs = session.scalars(
        for_update(
            select(Job)
            .where(
                Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
                Job.lease_expires_at.is_not(None),
                Job.lease_expires_at < now,
            )
            .order_by(Job.lease_expires_at)
            .limit(BATCH),
            skip_locked=True,
        )
    )
    for job in jobs:
        lost_worker = job.lease_owner is not None
        if lost_worker and job.attempts >= job.max_attempts:
            fail_job(
                session, job, f"its worker was lost {job.attempts} times (lease expired at stage {job.stage})"
            )
            result.failed_jobs.append(job.id)
            continue
        params = params_of(job)
        if params.redispatched_at is not None and now - params.redispatched_at < lease_delta():
            continue  # sent again recently: give that message a lease period to be claimed
        if lost_worker:
            # the dead worker's lease stays expired, so that the next claim takes over (and counts a run)
            log.warning(
                "job %s: lease of %s expired at stage %s; sending it again",
                job.id,
                job.lease_owner,
                job.stage,
            )
        else:
            job.lease_expires_at = now + lease_delta()
        params.redispatches += 1
        params.redispatched_at = now
        params.write(job)
        enqueue_stage(session, job)
        result.redispatched_jobs.append(job.id)


def replan_lost_requests(session: Session, now: datetime, result: SweepResult) -> None:
    stale = now - lease_delta()
    requests = session.scalars(
        for_update(
            select(DeletionRequest)
            .where(
                DeletionRequest.status == RequestStatus.RESOLVED,
                DeletionRequest.updated_at < stale,
                DeletionRequest.id.in_(
                    select(DeletionRequestModel.request_id).where(
                        DeletionRequestModel.status == ModelStatus.PENDING,
                        DeletionRequestModel.job_id.is_(None),
                    )
                ),
            )
            .limit(BATCH),
            skip_locked=True,
        )
    )
    for request in requests:
        request.updated_at = now  # not again before another lease period
        result.replanned_requests.append(request.id)
    if requests:
        enqueue(session, PLAN_TASK, plan_task_payload([request.id for request in requests]))


def resend_due_webhooks(session: Session, now: datetime, result: SweepResult) -> None:
    settings = get_settings()
    # A first attempt has its own message; only one lost for a lease period is sent again.
    first_lost = now - lease_delta()
    deliveries = session.scalars(
        for_update(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.status == DeliveryStatus.PENDING,
                or_(
                    (WebhookDelivery.attempts > 0) & (WebhookDelivery.next_attempt_at <= now),
                    (WebhookDelivery.attempts == 0) & (WebhookDelivery.next_attempt_at <= first_lost),
                ),
            )
            .limit(BATCH),
            skip_locked=True,
        )
    )
    in_flight = timedelta(seconds=settings.webhook_timeout_seconds * 3)
    for delivery in deliveries:
        delivery.next_attempt_at = now + in_flight  # not sent again while this one may be in flight
        enqueue(session, DELIVER_WEBHOOK_TASK, {"delivery_id": delivery.id})
        result.webhook_retries += 1
