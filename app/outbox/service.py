"""The transactional outbox.

`enqueue` writes a task row in the caller's transaction, so the task exists exactly when the state it
follows was committed. `dispatch_pending` hands committed rows to the broker afterwards and marks them
dispatched; while the broker is down the rows stay pending and a later pass sends them. Delivery is at
least once (a crash between send and mark sends again): every task is idempotent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.outbox.models import OutboxMessage

log = logging.getLogger("lethe.outbox")

Send = Callable[[str, dict[str, Any]], None]

DEFAULT_BATCH_SIZE = 100
# A broker error message can be long (tracebacks in reprs); the row keeps enough to diagnose.
MAX_ERROR_CHARS = 500
_ENQUEUED_FLAG = "lethe.outbox.enqueued"

# Set after a commit that wrote outbox rows: a dispatcher waiting on it sends them at once instead of at
# its next poll.
committed_work = threading.Event()


@dataclass(frozen=True)
class DispatchResult:
    sent: int
    failed: int
    pending: bool  # rows were left: the batch was full or the broker failed


def enqueue(session: Session, task_name: str, payload: dict[str, Any]) -> OutboxMessage:
    """Add a task to the caller's transaction; it reaches the broker only after that commits."""
    message = OutboxMessage(task_name=task_name, payload=payload)
    session.add(message)
    session.info[_ENQUEUED_FLAG] = True
    return message


# Bulk writers (app.asyncdb) insert these columns of OutboxMessage, and set `committed_work` once their
# transaction has committed.
OUTBOX_COLUMNS = ("task_name", "payload", "created_at", "attempts")


def outbox_row(task_name: str, payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A task as a row of OUTBOX_COLUMNS."""
    return {"task_name": task_name, "payload": payload, "created_at": now, "attempts": 0}


@event.listens_for(Session, "after_commit")
def _signal_committed_work(session: Session) -> None:
    if session.info.pop(_ENQUEUED_FLAG, False):
        committed_work.set()


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back_work(session: Session) -> None:
    session.info.pop(_ENQUEUED_FLAG, None)


def dispatch_pending(
    session_factory: sessionmaker[Session] | Callable[[], Session],
    send: Send,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> DispatchResult:
    """Send one batch of pending rows, oldest first.

    The rows are locked (SKIP LOCKED) while they are sent, so several dispatchers (API processes, the
    worker's periodic pass) share the work instead of sending a row twice. The first broker failure ends
    the pass: the failed row and the rest stay pending for the next pass.
    """
    sent = failed = 0
    with session_factory() as session, session.begin():
        rows = session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.dispatched_at.is_(None))
            .order_by(OutboxMessage.id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        for row in rows:
            row.attempts += 1
            try:
                send(row.task_name, dict(row.payload))
            except Exception as exc:  # the broker's errors vary by transport; all mean "not sent"
                row.last_error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
                failed += 1
                log.warning("outbox: broker refused task %s (row %s): %s", row.task_name, row.id, exc)
                break
            row.dispatched_at = utcnow()
            row.last_error = None
            sent += 1
    return DispatchResult(sent=sent, failed=failed, pending=failed > 0 or len(rows) == batch_size)


def dispatch_all_pending(
    session_factory: sessionmaker[Session] | Callable[[], Session],
    send: Send,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Send batches until nothing is pending or the broker fails; answers how many were sent."""
    total = 0
    while True:
        result = dispatch_pending(session_factory, send, batch_size)
        total += result.sent
        if result.failed or not result.pending:
            return total
