"""The Celery app as deployed: no torch at import (the API image imports task names), late acks with
prefetch 1, and a Redis visibility timeout above the longest task's hard limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.settings import Settings
from workers.celery_app import app as celery_app
from workers.celery_app import make_app

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_app_and_its_tasks_does_not_import_torch() -> None:
    code = "import sys, workers.celery_app, workers.tasks; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_tasks_are_acknowledged_late_one_at_a_time_and_routed_by_queue() -> None:
    settings = Settings()
    app = make_app(settings)
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > settings.gpu_task_time_limit_seconds
    assert conf.task_routes["lethe.unlearn"] == {"queue": "gpu"} and conf.task_default_queue == "default"


def test_gpu_tasks_get_hours_and_the_others_minutes() -> None:
    """The limits a worker applies: the task's own, else the app's default."""
    settings = Settings()
    app = make_app(settings)
    app.loader.import_default_modules()
    for name in ("lethe.train", "lethe.unlearn", "lethe.verify"):
        task = app.tasks[name]
        assert task.soft_time_limit == settings.gpu_task_soft_time_limit_seconds, name
        assert task.time_limit == settings.gpu_task_time_limit_seconds, name
    for name in ("lethe.plan", "lethe.promote", "lethe.deliver_webhook"):
        task = app.tasks[name]
        soft = task.soft_time_limit or app.conf.task_soft_time_limit
        assert soft == settings.task_soft_time_limit_seconds, name
        assert (task.time_limit or app.conf.task_time_limit) == settings.task_time_limit_seconds, name


def test_the_worker_app_serves_every_task_the_service_sends() -> None:
    import workers.tasks  # noqa: F401 - registers the tasks on the app

    names = set(celery_app.tasks)
    expected = {"lethe.plan", "lethe.train", "lethe.unlearn", "lethe.verify", "lethe.deliver_webhook"}
    assert expected | {"lethe.promote", "lethe.purge", "lethe.sweep"} <= names


def test_the_embedded_broker_keeps_its_messages_in_one_folder(tmp_path: Path) -> None:
    settings = Settings(broker_url="filesystem://", broker_folder=str(tmp_path / "broker"))
    options = make_app(settings).conf.broker_transport_options
    assert options["data_folder_in"] == options["data_folder_out"] == str(tmp_path / "broker")
