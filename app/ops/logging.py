"""Structured logs: one JSON object per line, stamped with the request id of the request being served.

Access lines name the route template, never the raw path (a path such as /v1/subjects/{subject_id} carries
a data-subject identifier), and no log line carries a request or response body.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

# Set by the request-context middleware; contextvars follow the request into the thread pool.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)

_HANDLER_NAME = "lethe"

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged as a field.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = current_request_id.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except (TypeError, orjson.JSONEncodeError):
            return json.dumps(entry, default=str, separators=(",", ":"))


class RequestIdFormatter(logging.Formatter):
    """Plain text for a terminal (LETHE_LOG_JSON=false), still with the request id."""

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = current_request_id.get() or "-"
        return super().format(record)


def configure_logging(level: str = "INFO", as_json: bool = True) -> None:
    """Send the service's and uvicorn's logs to stderr in one format. Idempotent; handlers that others
    installed on the root logger (pytest's capture) stay. uvicorn's access log is turned off: it prints
    raw paths, and the request-context middleware writes a safer access line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else RequestIdFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h.get_name() != _HANDLER_NAME] + [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    access.disabled = True
