"""The transactional outbox.

`enqueue` writes a task row in the caller's transaction, so the task exists exactly when the state it
follows was committed; bulk writers build the same rows (`outbox_row`) and insert them with their own
statement, or on a session with `enqueue_rows`. `dispatch_pending` hands committed rows to the broker
afterwards and marks them dispatched; while the broker is down the rows stay pending and a later pass
sends them. Delivery is at least once (a crash between send and mark sends again): every task is
idempotent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import event, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.outbox.celery_client import MERGEABLE_TASKS
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


@dataclass(frozen=True)
class QueuedTask:
    id: int
    task_name: str
    payload: dict[str, Any]


# The columns of OutboxMessage a task's row fills. Bulk writers (app.asyncdb) insert these, and set
# `committed_work` once their transaction has committed.
OUTBOX_COLUMNS = ("task_name", "payload", "created_at", "attempts")


def outbox_row(task_name: str, payload: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A task as a row of OUTBOX_COLUMNS."""
    return {"task_name": task_name, "payload": payload, "created_at": now, "attempts": 0}


def enqueue(session: Session, task_name: str, payload: dict[str, Any]) -> QueuedTask:
    """Add a task to the caller's transaction; it reaches the broker only after that commits."""
    (message_id,) = enqueue_rows(session, [outbox_row(task_name, payload, utcnow())])
    return QueuedTask(message_id, task_name, payload)


def enqueue_rows(session: Session, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert tasks (outbox_row) in the caller's transaction; answers their ids."""
    if not rows:
        return []
    session.info[_ENQUEUED_FLAG] = True
    table = OutboxMessage.__table__
    return list(session.scalars(insert(table).returning(table.c.id), list(rows)))


@event.listens_for(Session, "after_commit")
def _signal_committed_work(session: Session) -> None:
    if session.info.pop(_ENQUEUED_FLAG, False):
        committed_work.set()


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back_work(session: Session) -> None:
    session.info.pop(_ENQUEUED_FLAG, None)


class _PendingRow(Protocol):
    id: int
    task_name: str
    payload: dict[str, Any]


@dataclass
class _Message:
    """What one send carries: a row's task, or the rows of a mergeable task joined into one."""

    task_name: str
    payload: dict[str, Any]
    row_ids: list[int]


def _messages(rows: Sequence[_PendingRow]) -> list[_Message]:
    """The rows as messages in row order; the rows of a MERGEABLE_TASKS task whose payload is just its
    list go out as one message, at the place of the first."""
    messages: list[_Message] = []
    # Per merged task: its message and the items it carries, each once (a pass joins thousands).
    merged: dict[str, tuple[_Message, dict[Any, None]]] = {}
    for row in rows:
        key = MERGEABLE_TASKS.get(row.task_name)
        items = row.payload.get(key) if key is not None and row.payload.keys() == {key} else None
        if not isinstance(items, list):
            messages.append(_Message(row.task_name, dict(row.payload), [row.id]))
            continue
        if row.task_name not in merged:
            merged[row.task_name] = (_Message(row.task_name, {}, []), {})
            messages.append(merged[row.task_name][0])
        message, carried = merged[row.task_name]
        carried.update(dict.fromkeys(items))
        message.row_ids.append(row.id)
    for message, carried in merged.values():
        message.payload[MERGEABLE_TASKS[message.task_name]] = list(carried)
    return messages


def dispatch_pending(
    session_factory: sessionmaker[Session] | Callable[[], Session],
    send: Send,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> DispatchResult:
    """Send one batch of pending rows, oldest first (mergeable ones joined, see MERGEABLE_TASKS).

    The rows are locked (SKIP LOCKED) while they are sent, so several dispatchers (API processes, the
    worker's periodic pass) share the work instead of sending a row twice. The first broker failure ends
    the pass: the failed rows and the rest stay pending for the next pass. Core statements, not ORM
    objects: under load an API process runs passes all the while, beside the requests it serves.
    """
    sent: list[int] = []
    failed: list[int] = []
    error: str | None = None
    with session_factory() as session, session.begin():
        rows = session.execute(
            select(OutboxMessage.id, OutboxMessage.task_name, OutboxMessage.payload)
            .where(OutboxMessage.dispatched_at.is_(None))
            .order_by(OutboxMessage.id)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        for message in _messages(rows):
            try:
                send(message.task_name, message.payload)
            except Exception as exc:  # the broker's errors vary by transport; all mean "not sent"
                failed, error = message.row_ids, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
                log.warning(
                    "outbox: broker refused task %s (rows %s): %s",
                    message.task_name,
                    ", ".join(map(str, message.row_ids)),
                    exc,
                )
                break
            sent.extend(message.row_ids)
        attempted = update(OutboxMessage).values(attempts=OutboxMessage.attempts + 1)
        if sent:
            session.execute(
                attempted.where(OutboxMessage.id.in_(sent)).values(dispatched_at=utcnow(), last_error=None)
            )
        if failed:
            session.execute(attempted.where(OutboxMessage.id.in_(failed)).values(last_error=error))
    return DispatchResult(sent=len(sent), failed=len(failed), pending=bool(failed) or len(rows) == batch_size)


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
