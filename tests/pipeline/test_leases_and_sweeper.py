"""Job leases and the sweeper on the real database: a lost worker's job is sent again and taken over, a job
lost too often fails loudly, and a live lease keeps a second worker out."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.db import session_scope, utcnow
from app.jobs.models import Job, JobKind, JobRequest, JobStatus
from app.outbox.models import OutboxMessage
from app.registry.models import Model
from app.requests.models import DeletionRequest, DeletionRequestModel, RequestStatus
from workers.pipeline.leases import ClaimRefused, Heartbeat, LeaseLost, lock_job, take_lease
from workers.pipeline.stages import Stage
from workers.pipeline.sweeper import SweepResult, resend_expired_jobs

DEAD_WORKER = "gone-host:4242:deadbeef"


@pytest.fixture
def running_job(make_tenant: Callable[[], str]) -> Callable[..., str]:
    """A running unlearn job at stage `unlearning` for one request, held by a lease that expired."""

    def factory(attempts: int = 1, expired: bool = True) -> str:
        tenant_id = make_tenant()
        now = utcnow()
        with session_scope() as session:
            model = Model(tenant_id=tenant_id, name=f"m-{uuid.uuid4().hex[:6]}", task="image-classification")
            request = DeletionRequest(
                tenant_id=tenant_id,
                status=RequestStatus.UNLEARNING,
                received_at=now,
                due_at=now + timedelta(days=30),
            )
            session.add_all([model, request])
            session.flush()
            job = Job(
                tenant_id=tenant_id,
                model_id=model.id,
                kind=JobKind.UNLEARN,
                status=JobStatus.RUNNING,
                stage=Stage.UNLEARNING,
                attempts=attempts,
                max_attempts=3,
                lease_owner=DEAD_WORKER,
                lease_expires_at=now - timedelta(seconds=1) if expired else now + timedelta(minutes=5),
                params={"chain": ["deepobliviate"], "chain_index": 0},
            )
            session.add(job)
            session.flush()
            session.add(JobRequest(job_id=job.id, request_id=request.id))
            session.add(
                DeletionRequestModel(
                    request_id=request.id, model_id=model.id, status="unlearning", job_id=job.id
                )
            )
            return job.id

    return factory


def sweep_jobs() -> SweepResult:
    result = SweepResult()
    with session_scope() as session:
        resend_expired_jobs(session, utcnow(), result)
    return result


def unlearn_messages(job_id: str) -> list[OutboxMessage]:
    with session_scope() as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.task_name == "lethe.unlearn")).all()
        return [row for row in rows if row.payload.get("job_id") == job_id]


def test_a_lost_workers_job_is_sent_again_and_the_next_claim_takes_over(running_job) -> None:
    job_id = running_job(attempts=1)

    assert job_id in sweep_jobs().redispatched_jobs
    assert len(unlearn_messages(job_id)) == 1
    assert job_id not in sweep_jobs().redispatched_jobs  # not again before a lease period has passed

    with session_scope() as session:
        job = lock_job(session, job_id)
        assert job is not None and job.lease_owner == DEAD_WORKER  # the dead lease is left to expire
        assert take_lease(job, "new-worker") is True
        assert (job.attempts, job.lease_owner) == (2, "new-worker")


def test_a_job_whose_worker_was_lost_max_attempts_times_fails_with_its_requests(running_job) -> None:
    job_id = running_job(attempts=3)

    assert job_id in sweep_jobs().failed_jobs

    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.FAILED and job.lease_owner is None
        assert "lost 3 times" in (job.error or "")
        request = session.scalars(
            select(DeletionRequest)
            .join(JobRequest, JobRequest.request_id == DeletionRequest.id)
            .where(JobRequest.job_id == job_id)
        ).one()
        assert request.status == RequestStatus.FAILED and "lost" in (request.failure_reason or "")
    assert unlearn_messages(job_id) == []


def test_a_live_lease_keeps_a_second_worker_out(running_job) -> None:
    job_id = running_job(expired=False)
    with session_scope() as session:
        job = lock_job(session, job_id)
        assert job is not None
        with pytest.raises(ClaimRefused):
            take_lease(job, "second-worker")
    assert job_id not in sweep_jobs().redispatched_jobs


def test_progress_stops_the_work_once_the_lease_is_taken_over(running_job) -> None:
    job_id = running_job(expired=False)
    with Heartbeat(job_id, DEAD_WORKER) as heartbeat:
        heartbeat.progress(30, force=True)
        with session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None and job.progress == 30
            job.lease_owner = "someone-else"
        with pytest.raises(LeaseLost):
            heartbeat.progress(40, force=True)
