"""Job leases: which worker may work on a job right now, and for how long without a sign of life.

A worker claims a job by writing its token and an expiry into the (locked) job row, renews the expiry from
a heartbeat thread while it works, and releases the lease when it hands the job to the next stage. A
lease that lapses means the worker was lost: the sweeper re-sends the job's task and the next claim takes
over, counting one more attempt. Every write that matters checks the token, so a worker that lost its
lease (paused, partitioned) can no longer move the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import for_update, get_session_factory, utcnow
from app.jobs.models import Job, JobStatus
from app.registry.models import Model
from app.settings import get_settings

log = logging.getLogger("lethe.pipeline")

TERMINAL_JOB_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
# Progress is written at most this often (a method may report hundreds of steps per second).
PROGRESS_INTERVAL_SECONDS = 0.5


class ClaimRefused(Exception):
    """The job is not this task's to work on now (finished, at another stage, held by a live worker)."""


class AttemptsExhausted(Exception):
    """Claiming would start one run more than the job's max_attempts."""


class LeaseLost(RuntimeError):
    """Another worker took the job over: stop without writing anything."""


def new_token() -> str:
    """Identifies one task execution: host, process and a random part (a pid can come back)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def lease_delta() -> timedelta:
    return timedelta(seconds=get_settings().job_lease_seconds)


def lock_job(session: Session, job_id: str) -> Job | None:
    return session.scalars(for_update(select(Job).where(Job.id == job_id))).one_or_none()


def lock_model(session: Session, model_id: str) -> Model:
    return session.scalars(for_update(select(Model).where(Model.id == model_id))).one()


def take_lease(job: Job, token: str, now: datetime | None = None) -> bool:
    """Claim `job` (whose row the caller holds locked) for `token`; answers whether it took over from a
    lost worker. Raises ClaimRefused while another worker's lease runs, AttemptsExhausted past the bound."""
    now = now or utcnow()
    if job.status in TERMINAL_JOB_STATUSES:
        raise ClaimRefused(f"job {job.id} is {job.status}")
    held_by_other = job.lease_owner is not None and job.lease_owner != token
    if held_by_other and job.lease_expires_at is not None and job.lease_expires_at > now:
        raise ClaimRefused(f"job {job.id} is held by {job.lease_owner} until {job.lease_expires_at}")
    takeover = held_by_other
    if takeover or job.attempts == 0:
        if job.attempts >= job.max_attempts:
            raise AttemptsExhausted(f"job {job.id} already ran {job.attempts} times")
        job.attempts += 1
    job.lease_owner = token
    job.lease_expires_at = now + lease_delta()
    job.heartbeat_at = now
    job.status = JobStatus.RUNNING
    job.started_at = job.started_at or now
    return takeover


def release_lease(job: Job, token: str, now: datetime | None = None) -> None:
    """Hand the job on: no owner, and a deadline by which the next stage's task must have claimed it
    (else the sweeper sends that task again)."""
    if job.lease_owner == token:
        job.lease_owner = None
        job.lease_expires_at = (now or utcnow()) + lease_delta()


def check_holder(job: Job, token: str) -> None:
    if job.lease_owner != token:
        raise LeaseLost(f"job {job.id} is now held by {job.lease_owner}")


class Heartbeat:
    """Renews the lease every `job_heartbeat_seconds` from a thread and writes progress for the task.

    The work calls `progress(percent, message)`; it raises LeaseLost once the lease is gone, which is how
    a long computation learns that it must stop."""

    def __init__(self, job_id: str, token: str) -> None:
        self.job_id = job_id
        self.token = token
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_write = 0.0
        self._last_percent = -1

    def __enter__(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.job_id[:8]}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        interval = get_settings().job_heartbeat_seconds
        while not self._stop.wait(interval):
            try:
                if not self._write({}):
                    self.lost.set()
                    log.warning("job %s: lease lost to another worker", self.job_id)
                    return
            except Exception:  # a database blip: the next beat tries again, the lease has slack
                log.exception("job %s: heartbeat failed", self.job_id)

    def _write(self, values: dict[str, object]) -> bool:
        now = utcnow()
        with get_session_factory()() as session, session.begin():
            result = session.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.lease_owner == self.token)
                .values(heartbeat_at=now, lease_expires_at=now + lease_delta(), **values)
            )
            return result.rowcount == 1

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"job {self.job_id}: lease lost")

    def progress(self, percent: float, force: bool = False) -> None:
        """Record the job's progress (0-100); throttled, never backwards within a stage's range."""
        self.check()
        value = max(0, min(100, int(percent)))
        now = time.monotonic()
        if not force and (value == self._last_percent or now - self._last_write < PROGRESS_INTERVAL_SECONDS):
            return
        self._last_write, self._last_percent = now, value
        if not self._write({"progress": value}):
            self.lost.set()
            self.check()
