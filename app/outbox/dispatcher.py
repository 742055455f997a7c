"""A thread that empties the outbox: woken by a commit that enqueued work (its pass follows GATHER_SECONDS
later, so that under load one pass sends many commits' rows), and polling on an interval so rows left
behind by a broker outage (or written by another process) go out later."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.orm import Session

from app.db import get_session_factory
from app.outbox.celery_client import send_to_broker
from app.outbox.service import Send, committed_work, dispatch_all_pending
from app.settings import Settings

log = logging.getLogger("lethe.outbox")

# How long a woken dispatcher waits for more commits before its pass (planning waits seconds for its
# batching window anyway).
GATHER_SECONDS = 0.5


class OutboxDispatcher:
    def __init__(self, session_factory: Callable[[], Session], send: Send, poll_seconds: float) -> None:
        self._session_factory = session_factory
        self._send = send
        self._poll_seconds = poll_seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="outbox-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        committed_work.set()  # wake the thread so it sees the stop at once
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            if committed_work.wait(self._poll_seconds):
                # Let the commits of the next moments join this pass: under load one pass then carries
                # many batches' rows, and their planning tasks go out as one message.
                self._stopping.wait(GATHER_SECONDS)
            committed_work.clear()
            if self._stopping.is_set():
                return
            try:
                dispatch_all_pending(self._session_factory, self._send)
            except Exception:  # a database outage must not end the thread: the next pass retries
                log.exception("outbox: dispatch pass failed")


def outbox_lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The API's lifespan part: run a dispatcher while the app serves (unless settings turn it off)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher = None
        if settings.outbox_dispatch_in_api:
            # The factory is looked up per session so a test that repoints the database is followed.
            dispatcher = OutboxDispatcher(
                lambda: get_session_factory()(), send_to_broker, settings.outbox_poll_seconds
            )
            dispatcher.start()
        app.state.outbox_dispatcher = dispatcher  # None when off; tests pause it through this
        try:
            yield
        finally:
            if dispatcher is not None:
                dispatcher.stop()

    return lifespan
