"""Method attempts: one job_attempts row per method of the chain, and the move to the next method when an
attempt ends without a promotable candidate. Every attempt's end is also an audit event."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.jobs.models import Job, JobAttempt, Stage
from app.jobs.params import UnlearnParams
from app.requests.lifecycle import move_models
from app.requests.models import ModelStatus
from workers.pipeline.jobs import audit_job, enqueue_stage, fail_job
from workers.pipeline.leases import release_lease
from workers.pipeline.stages import ACTOR

# How an attempt ended.
CANDIDATE = "candidate"  # a candidate version was written; verification follows
PASSED = "passed"
REJECTED = "rejected"  # the gate failed it or could not tell (inconclusive)
UNAVAILABLE = "unavailable"  # the method cannot run on this version
ERROR = "error"
STALE = "stale"  # the alias moved while the job ran: the chain restarts on the new served version


def chain_position(job: Job) -> tuple[list[str], int]:
    params = UnlearnParams.of(job)
    return params.chain, params.chain_index


def current_attempt(session: Session, job: Job) -> JobAttempt | None:
    _, index = chain_position(job)
    return session.scalars(
        select(JobAttempt)
        .where(JobAttempt.job_id == job.id, JobAttempt.attempt == _attempt_number(job, index))
        .order_by(JobAttempt.id.desc())
        .limit(1)
    ).first()


def _attempt_number(job: Job, index: int) -> int:
    # Numbers keep growing across chain restarts (stale alias), so each attempt row stays distinct.
    return UnlearnParams.of(job).attempt_offset + index + 1


def start_attempt(session: Session, job: Job) -> JobAttempt:
    """The attempt row of the job's current method; a run taken over from a lost worker reuses it."""
    chain, index = chain_position(job)
    attempt = current_attempt(session, job)
    if attempt is not None and attempt.finished_at is None:
        attempt.details = {**attempt.details, "restarts": int(attempt.details.get("restarts", 0)) + 1}
        return attempt
    attempt = JobAttempt(
        job_id=job.id,
        method=chain[index],
        attempt=_attempt_number(job, index),
        started_at=utcnow(),
        details={},
    )
    session.add(attempt)
    session.flush()
    return attempt


def finish_attempt(
    session: Session,
    job: Job,
    attempt: JobAttempt,
    outcome: str,
    verdict: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    attempt.finished_at = attempt.finished_at or utcnow()
    attempt.outcome = outcome
    attempt.verdict = verdict
    attempt.details = {**attempt.details, **(details or {})}
    audit_job(
        session,
        job,
        "attempt_finished",
        {"method": attempt.method, "attempt": attempt.attempt, "outcome": outcome, "verdict": verdict,
         "reason": (details or {}).get("reason")},
    )  # fmt: skip


def escalate(session: Session, job: Job, token: str, reason: str) -> bool:
    """Move the job to the next method of its chain (True), or fail it when the chain is spent (False).
    The caller has finished the current attempt."""
    chain, index = chain_position(job)
    if index + 1 >= len(chain):
        fail_job(session, job, f"every method of the chain failed ({', '.join(chain)}); last: {reason}")
        return False
    params = UnlearnParams.of(job)
    params.chain_index = index + 1
    params.write(job)
    job.method = chain[index + 1]
    job.stage = Stage.UNLEARNING
    job.candidate_version_id = None
    detail = {"job_id": job.id, "escalated_to": job.method, "reason": reason[:300]}
    move_models(session, job, ModelStatus.UNLEARNING, actor=ACTOR, detail=detail)
    audit_job(session, job, "escalated", {"to": job.method, "reason": reason[:300]})
    release_lease(job, token)
    enqueue_stage(session, job)
    return True
