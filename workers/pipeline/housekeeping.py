"""The worker's housekeeping: outbox passes and sweeps, from a thread of the worker's main process.

Tasks write their follow-up work into the outbox and send it right after their commit (`dispatch_now`);
this loop sends whatever is left (a broker outage, a task killed between commit and send) every
`outbox_poll_seconds`, sweeps every `sweep_interval_seconds` and signs the audit heads that moved every
`audit_checkpoint_interval_seconds` (app.audit.checkpoints). Every worker runs one: the outbox rows are
shared out with SKIP LOCKED and the sweeper's actions are idempotent, so more workers only mean more
frequent passes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery

from app.audit.checkpoints import checkpoint_moved_heads
from app.db import get_session_factory
from app.outbox.service import committed_work, dispatch_all_pending
from app.settings import get_settings

log = logging.getLogger("lethe.worker")

_loop: Housekeeping | None = None


def sender(celery: Celery) -> Any:
    """The outbox's `send`: publish by task name with the worker app's routes, failing fast."""

    def send(task_name: str, kwargs: dict[str, Any]) -> None:
        celery.send_task(task_name, kwargs=kwargs, retry=False)

    return send


def dispatch_now(celery: Celery) -> int:
    """Send the outbox rows committed so far; a broker outage leaves them for a later pass."""
    try:
        return dispatch_all_pending(lambda: get_session_factory()(), sender(celery))
    except Exception:  # the database may be down too: the housekeeping loop retries
        log.exception("outbox: dispatch pass failed")
        return 0


class Housekeeping:
    def __init__(self, celery: Celery) -> None:
        self.celery = celery
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lethe-housekeeping", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        committed_work.set()
        self.thread.join(timeout)

    def _run(self) -> None:
        from workers.pipeline.sweeper import sweep

        settings = get_settings()
        next_sweep = next_checkpoint = 0.0
        while not self.stopping.is_set():
            dispatch_now(self.celery)
            if time.monotonic() >= next_sweep:
                try:
                    sweep()
                except Exception:
                    log.exception("sweep failed")
                dispatch_now(self.celery)
                next_sweep = time.monotonic() + settings.sweep_interval_seconds
            if time.monotonic() >= next_checkpoint:
                try:
                    checkpoint_moved_heads()
                except Exception:
                    log.exception("audit checkpoint pass failed")
                dispatch_now(self.celery)
                next_checkpoint = time.monotonic() + settings.audit_checkpoint_interval_seconds
            committed_work.wait(settings.outbox_poll_seconds)
            committed_work.clear()


def start_housekeeping(celery: Celery) -> None:
    global _loop
    if _loop is None:
        _loop = Housekeeping(celery)
        _loop.start()
        log.info("housekeeping started (sweeper and outbox passes)")


def stop_housekeeping() -> None:
    global _loop
    if _loop is not None:
        _loop.stop()
        _loop = None
