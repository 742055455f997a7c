"""A bare Celery client: the API sends tasks by name and never imports worker code (nor torch).

Routing lives here so that the API and the workers (which import this table) agree on queues: the GPU
work goes to `gpu`, everything else to `default`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from app.settings import Settings, get_settings

DEFAULT_QUEUE = "default"
GPU_QUEUE = "gpu"

PLAN_TASK = "lethe.plan"
TRAIN_TASK = "lethe.train"
CHECK_ARTIFACT_TASK = "lethe.check_artifact"  # load a registered artifact once: may the version serve
UNLEARN_TASK = "lethe.unlearn"
VERIFY_TASK = "lethe.verify"
DELIVER_WEBHOOK_TASK = "lethe.deliver_webhook"
AUDIT_CHECKPOINT_TASK = "lethe.audit_checkpoint"

TASK_ROUTES: dict[str, dict[str, str]] = {
    TRAIN_TASK: {"queue": GPU_QUEUE},
    CHECK_ARTIFACT_TASK: {"queue": GPU_QUEUE},  # the workers sized for loading models
    UNLEARN_TASK: {"queue": GPU_QUEUE},
    VERIFY_TASK: {"queue": GPU_QUEUE},
    "lethe.*": {"queue": DEFAULT_QUEUE},
}

# Tasks whose payload is {key: [ids]}: the rows of such a task that one outbox pass finds go out as one
# message with their ids joined. Publishing a message costs the sender about half a millisecond of CPU,
# as much as recording a deletion request, so intake plans its requests a batch at a time.
MERGEABLE_TASKS: dict[str, str] = {PLAN_TASK: "request_ids"}

# A broker that does not answer must fail the send quickly: the row stays in the outbox and is sent
# again later, rather than holding the dispatcher.
BROKER_CONNECT_TIMEOUT_SECONDS = 2.0


def make_celery_client(settings: Settings) -> Celery:
    client = Celery("lethe-api", broker=settings.broker_url, set_as_current=False)
    client.conf.update(
        task_routes=TASK_ROUTES,
        task_default_queue=DEFAULT_QUEUE,
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT_SECONDS,
        broker_connection_retry_on_startup=False,
        broker_transport_options={
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_SECONDS,
            "socket_timeout": BROKER_CONNECT_TIMEOUT_SECONDS,
            # One quick reconnect for a blip; a real outage is retried by the outbox, not here.
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
        },
        task_serializer="json",
        accept_content=["json"],
    )
    return client


@lru_cache
def get_celery_client() -> Celery:
    return make_celery_client(get_settings())


def send_to_broker(task_name: str, kwargs: dict[str, Any]) -> None:
    """Publish one task; raises when the broker is unreachable (no silent retry loop here)."""
    get_celery_client().send_task(task_name, kwargs=kwargs, retry=False)
