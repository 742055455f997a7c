"""The event types a webhook subscription can ask for."""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    REQUEST_RESOLVED = "request.resolved"
    REQUEST_NO_DATA = "request.no_data"
    REQUEST_QUEUED = "request.queued"
    REQUEST_UNLEARNING = "request.unlearning"
    REQUEST_VERIFYING = "request.verifying"
    REQUEST_COMPLETED = "request.completed"
    REQUEST_FAILED = "request.failed"
    REQUEST_CANCELED = "request.canceled"
    REQUEST_EXTENDED = "request.extended"
    MODEL_PROMOTED = "model.promoted"
    MODEL_ROLLED_BACK = "model.rolled_back"
    AUDIT_CHECKPOINT = "audit.checkpoint"  # a signed head of the tenant's audit chain (app.audit.checkpoints)
    ALL = "*"


_REQUEST_EVENTS = {
    event.value.removeprefix("request."): event for event in EventType if event.startswith("request.")
}


def request_event(status: str) -> EventType | None:
    """The event of a request reaching `status` (None for the initial `received`, which the 202 tells)."""
    return _REQUEST_EVENTS.get(status)
