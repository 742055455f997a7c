"""Task names and job stages: which task carries a job on from the stage its row is in.

The job row says where a job stands; a task message only says "look at job X". So whoever finds a job
stuck (the sweeper, a job that finished and frees its model) re-sends the task of its stage, and a task
that arrives for a stage the job has left does nothing.
"""

from __future__ import annotations

from app.jobs.models import Job, JobKind, Stage
from app.outbox.celery_client import (
    DELIVER_WEBHOOK_TASK,
    PLAN_TASK,
    TRAIN_TASK,
    UNLEARN_TASK,
    VERIFY_TASK,
)

# Tasks only the workers send (the API sends the ones above); all routed to the default queue.
PROMOTE_TASK = "lethe.promote"
PURGE_TASK = "lethe.purge"
SWEEP_TASK = "lethe.sweep"

__all__ = [
    "DELIVER_WEBHOOK_TASK",
    "PLAN_TASK",
    "PROMOTE_TASK",
    "PURGE_TASK",
    "SWEEP_TASK",
    "TRAIN_TASK",
    "UNLEARN_TASK",
    "VERIFY_TASK",
    "Stage",
    "task_for",
]

# Who the worker is in audit rows and alias history.
ACTOR = "lethe-worker"


_STAGE_TASKS = {
    (JobKind.UNLEARN, Stage.QUEUED): UNLEARN_TASK,
    (JobKind.UNLEARN, Stage.UNLEARNING): UNLEARN_TASK,
    (JobKind.UNLEARN, Stage.VERIFYING): VERIFY_TASK,
    (JobKind.UNLEARN, Stage.PROMOTING): PROMOTE_TASK,
    (JobKind.TRAIN, Stage.QUEUED): TRAIN_TASK,
    (JobKind.TRAIN, Stage.TRAINING): TRAIN_TASK,
}


def task_for(job: Job) -> tuple[str, dict[str, str]] | None:
    """The task (name, payload) that moves `job` on from its stage; None when nothing does."""
    name = _STAGE_TASKS.get((JobKind(job.kind), Stage(job.stage or Stage.QUEUED)))
    if name is None:
        return None
    payload = {"job_id": job.id}
    if name == TRAIN_TASK:
        payload |= {"tenant_id": job.tenant_id, "version_id": job.candidate_version_id or ""}
    return name, payload
