"""The Celery tasks: thin wrappers that call the pipeline and then send what it committed to the outbox.

Each message only names a row (a request, a job, a delivery); the pipeline reads the row's state and does
what that state calls for, so a message delivered twice, late, or after a lost worker does no harm.
torch is imported by the pipeline's GPU stages only, inside the task.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import OperationalError

from app.outbox.celery_client import AUDIT_CHECKPOINT_TASK, CHECK_ARTIFACT_TASK
from workers.celery_app import app
from workers.pipeline.housekeeping import dispatch_now
from workers.pipeline.stages import (
    DELIVER_WEBHOOK_TASK,
    PLAN_TASK,
    PROMOTE_TASK,
    PURGE_TASK,
    SWEEP_TASK,
    TRAIN_TASK,
    UNLEARN_TASK,
    VERIFY_TASK,
)

# A deadlock or a database blip: the task runs again shortly (a wake-up: the rows say what is left to do).
# A longer outage outlasts the retries; the sweeper then sends the work again from the rows.
TRANSIENT = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "max_retries": 5,
}


@app.task(name=PLAN_TASK, **TRANSIENT)
def plan(request_ids: list[str] | None = None, request_id: str | None = None, **_: object) -> None:
    """Plan each request (idempotent: a retry plans again only what is left). `request_id` is the
    one-request form that tasks queued by earlier releases carry."""
    from workers.pipeline.plan import plan_request

    for one in [*(request_ids or ()), *([request_id] if request_id else [])]:
        plan_request(one)
    dispatch_now(app)


@app.task(name=UNLEARN_TASK, **TRANSIENT)
def unlearn(job_id: str) -> None:
    from workers.pipeline.unlearn import run_unlearn

    reopen = run_unlearn(job_id)
    if reopen is not None:
        # The batch is still open: look again when its window closes, without holding a worker meanwhile.
        # (If this wake-up is lost, the job's lease expires and the sweeper sends the task again.)
        unlearn.apply_async(kwargs={"job_id": job_id}, eta=reopen)
    dispatch_now(app)


@app.task(name=VERIFY_TASK, **TRANSIENT)
def verify(job_id: str) -> None:
    from workers.pipeline.verify import run_verify

    run_verify(job_id)
    dispatch_now(app)


@app.task(name=PROMOTE_TASK, **TRANSIENT)
def promote(job_id: str) -> None:
    from workers.pipeline.promote import run_promote

    run_promote(job_id)
    dispatch_now(app)


@app.task(name=PURGE_TASK, **TRANSIENT)
def purge(job_id: str | None = None) -> None:
    from workers.pipeline.purge import run_purge

    run_purge(job_id)
    dispatch_now(app)


@app.task(name=TRAIN_TASK, **TRANSIENT)
def train(job_id: str, tenant_id: str | None = None, version_id: str | None = None) -> None:
    from workers.pipeline.train import run_train

    run_train(job_id)
    dispatch_now(app)


@app.task(name=CHECK_ARTIFACT_TASK, **TRANSIENT)
def check_artifact(version_id: str) -> None:
    from workers.pipeline.artifacts import check_artifact as run_check

    run_check(version_id)


@app.task(name=DELIVER_WEBHOOK_TASK, **TRANSIENT)
def deliver_webhook(delivery_id: str) -> None:
    from workers.pipeline.webhooks import deliver

    deliver(delivery_id)


@app.task(name=AUDIT_CHECKPOINT_TASK, **TRANSIENT)
def audit_checkpoint(tenant_id: str) -> None:
    """Sign the tenant's audit head (queued with each issued certificate)."""
    from app.audit.checkpoints import checkpoint_tenants

    checkpoint_tenants([tenant_id])
    dispatch_now(app)  # the audit.checkpoint webhook deliveries


@app.task(name=SWEEP_TASK)
def sweep() -> dict[str, Any]:
    from workers.pipeline.sweeper import sweep as run_sweep

    result = run_sweep()
    dispatch_now(app)
    return {"redispatched": len(result.redispatched_jobs), "failed": len(result.failed_jobs)}
