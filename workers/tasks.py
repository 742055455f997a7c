"""The Celery tasks: thin wrappers that call the pipeline and then send what it committed to the outbox.

Each message only names a row (a request, a job, a delivery); the pipeline reads the row's state and does
what that state calls for, so a message delivered twice, late, or after a lost worker does no harm.
torch is imported by the pipeline's GPU stages only, inside the task.
"""

from __future__ import annotations

from typing import Any

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


@app.task(name=PLAN_TASK)
def plan(request_id: str, tenant_id: str | None = None) -> None:
    from workers.pipeline.plan import plan_request

    plan_request(request_id)
    dispatch_now(app)


@app.task(name=UNLEARN_TASK)
def unlearn(job_id: str) -> None:
    from workers.pipeline.unlearn import run_unlearn

    run_unlearn(job_id)
    dispatch_now(app)


@app.task(name=VERIFY_TASK)
def verify(job_id: str) -> None:
    from workers.pipeline.verify import run_verify

    run_verify(job_id)
    dispatch_now(app)


@app.task(name=PROMOTE_TASK)
def promote(job_id: str) -> None:
    from workers.pipeline.promote import run_promote

    run_promote(job_id)
    dispatch_now(app)


@app.task(name=PURGE_TASK)
def purge(job_id: str | None = None) -> None:
    from workers.pipeline.purge import run_purge

    run_purge(job_id)
    dispatch_now(app)


@app.task(name=TRAIN_TASK)
def train(job_id: str, tenant_id: str | None = None, version_id: str | None = None) -> None:
    from workers.pipeline.train import run_train

    run_train(job_id)
    dispatch_now(app)


@app.task(name=DELIVER_WEBHOOK_TASK)
def deliver_webhook(delivery_id: str) -> None:
    from workers.pipeline.webhooks import deliver

    deliver(delivery_id)


@app.task(name=SWEEP_TASK)
def sweep() -> dict[str, Any]:
    from workers.pipeline.sweeper import sweep as run_sweep

    result = run_sweep()
    dispatch_now(app)
    return {"redispatched": len(result.redispatched_jobs), "failed": len(result.failed_jobs)}
