"""The workers' Celery app: `celery --app workers.celery_app:app worker --queues gpu --concurrency 1
--prefetch-multiplier 1` (one worker per GPU) and `--queues default` for the rest.

Postgres holds every job's state; the broker only carries "look at job X" messages, so the settings here
aim at never running a task twice at once and never losing one silently:
- late acknowledgement, prefetch 1 and reject-on-worker-lost: a message leaves Redis only once its task
  ended, and a worker that dies gives it back;
- a Redis visibility timeout above the longest task, so Redis does not hand a running task to a second
  worker (a lost worker's job is picked up sooner by the sweeper, through its expired lease);
- soft and hard time limits per queue.

Nothing here imports torch: the API image imports task names and routes without it. The worker's main
process runs a housekeeping thread (sweeper and outbox passes, `workers.pipeline.housekeeping`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery, signals

from app.db import import_all_models
from app.outbox.celery_client import DEFAULT_QUEUE, GPU_QUEUE, TASK_ROUTES
from app.settings import Settings, get_settings

log = logging.getLogger("lethe.worker")

GPU_TASKS = tuple(name for name, route in TASK_ROUTES.items() if route["queue"] == GPU_QUEUE)


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith("filesystem://"):
        # The embedded demo's broker: message files in one folder shared by the processes.
        folder = Path(settings.broker_folder)
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # Exchange tables, which kombu would otherwise write to ./control of the working directory.
            "control_folder": str(folder / "control"),
        }
    return {"visibility_timeout": settings.broker_visibility_timeout_seconds}


def task_annotations(settings: Settings) -> dict[str, dict[str, Any]]:
    """Time limits of the GPU tasks: hours. The others get the app's default limits (minutes): a "*"
    annotation would not do, Celery applies it after a task's own and it would win."""
    gpu = {
        "soft_time_limit": settings.gpu_task_soft_time_limit_seconds,
        "time_limit": settings.gpu_task_time_limit_seconds,
    }
    return {name: gpu for name in GPU_TASKS}


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    import_all_models()  # every table known before the first query resolves foreign keys
    celery = Celery("lethe", broker=settings.broker_url, include=["workers.tasks"])
    celery.conf.update(
        task_routes=TASK_ROUTES,
        task_default_queue=DEFAULT_QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_annotations=task_annotations(settings),
        task_soft_time_limit=settings.task_soft_time_limit_seconds,
        task_time_limit=settings.task_time_limit_seconds,
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        # The housekeeping thread needs the main process alive; children are recycled instead of leaking.
        worker_max_tasks_per_child=100,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return celery


app = make_app()


@signals.worker_process_init.connect
def _forget_inherited_connections(**_: Any) -> None:
    """A forked pool process must not share the parent's database connections."""
    from app.db import get_engine, get_session_factory

    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
    get_engine.cache_clear()
    get_session_factory.cache_clear()


@signals.worker_ready.connect
def _start_housekeeping(sender: Any = None, **_: Any) -> None:
    from workers.pipeline.housekeeping import start_housekeeping

    start_housekeeping(app)


@signals.worker_shutdown.connect
def _stop_housekeeping(**_: Any) -> None:
    from workers.pipeline.housekeeping import stop_housekeeping

    stop_housekeeping()
