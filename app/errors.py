"""RFC 9457 problem details: the one shape of every 4xx and 5xx answer.

Domain code raises `ProblemError` (or one of the helpers below); the handlers installed by
`install_error_handlers` turn it, FastAPI's own errors, database outages and anything unexpected into
`application/problem+json` with type, title, status, detail, instance and request_id.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import Scope

from app.domain import DomainError
from app.ops.metrics import UNMATCHED_ROUTE

PROBLEM_CONTENT_TYPE = "application/problem+json"
# A URN names each problem kind without claiming a web address that serves no documentation.
PROBLEM_TYPE_PREFIX = "urn:lethe:problem:"
REQUEST_ID_HEADER = "X-Request-ID"
# How long a client should wait before retrying after a database outage.
DB_OUTAGE_RETRY_AFTER_SECONDS = 5

log = logging.getLogger("lethe.errors")


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_CONTENT_TYPE


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(
        description="where: body, path, query or header, then field names or indexes"
    )
    msg: str
    type: str


class ProblemDetails(BaseModel):
    """The body of every error answer (RFC 9457, `application/problem+json`), as problem_body writes it.
    Further members may appear for some problems (e.g. `checks` of /readyz)."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(description="a URN naming the kind of problem (urn:lethe:problem:...), or about:blank")
    title: str
    status: int
    detail: str
    instance: str | None = Field(description="the path of the request")
    request_id: str | None = Field(description="the request's X-Request-ID, for support and the logs")
    errors: list[ValidationIssue] | None = Field(
        default=None, description="validation problems (422 only): each failed field"
    )


class ProblemError(StarletteHTTPException):
    """An error answer. Subclassing Starlette's HTTPException lets FastAPI re-raise it untouched even
    when it happens while the request body is being read (the body size limit relies on that)."""

    def __init__(
        self,
        status: int,
        title: str | None = None,
        detail: str | None = None,
        type_suffix: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.status = status
        self.title = title or _status_phrase(status)
        self.type_suffix = type_suffix
        self.extensions = extensions or {}


def bad_request(detail: str, type_suffix: str = "bad-request") -> ProblemError:
    return ProblemError(400, "Bad request", detail, type_suffix)


def forbidden(detail: str, type_suffix: str = "forbidden") -> ProblemError:
    return ProblemError(403, "Forbidden", detail, type_suffix)


def not_found(resource: str, identifier: object | None = None) -> ProblemError:
    """404 for a missing object, and for another tenant's object (its existence is not disclosed)."""
    detail = f"{resource} {identifier} not found" if identifier is not None else f"{resource} not found"
    return ProblemError(404, "Not found", detail, "not-found")


def conflict(detail: str, type_suffix: str = "conflict") -> ProblemError:
    return ProblemError(409, "Conflict", detail, type_suffix)


def unprocessable(detail: str, type_suffix: str = "unprocessable") -> ProblemError:
    return ProblemError(422, "Unprocessable content", detail, type_suffix)


def request_id_of(request: Request) -> str:
    """The id the request-id middleware put on the request; a fresh one if it did not run."""
    state = request.scope.setdefault("state", {})
    request_id = state.get("request_id")
    if request_id is None:
        request_id = state["request_id"] = uuid.uuid4().hex
    return request_id


def problem_body(
    status: int,
    title: str | None = None,
    detail: str | None = None,
    type_suffix: str | None = None,
    *,
    instance: str | None = None,
    request_id: str | None = None,
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + type_suffix if type_suffix else "about:blank",
        "title": title or _status_phrase(status),
        "status": status,
        "detail": detail if detail is not None else _status_phrase(status),
        "instance": instance,
        "request_id": request_id,
    }
    if extensions:
        body.update({k: v for k, v in extensions.items() if k not in body})
    return body


def problem_response(
    request: Request,
    status: int,
    title: str | None = None,
    detail: str | None = None,
    type_suffix: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> ProblemResponse:
    """Render a problem for `request`; middleware that answers before routing uses this too."""
    request_id = request_id_of(request)
    body = problem_body(
        status,
        title,
        detail,
        type_suffix,
        instance=request.url.path,
        request_id=request_id,
        extensions=extensions,
    )
    all_headers = {REQUEST_ID_HEADER: request_id, **(headers or {})}
    return ProblemResponse(jsonable_encoder(body), status_code=status, headers=all_headers)


def is_database_unavailable(exc: BaseException) -> bool:
    """True when the database could not serve the statement (down, unreachable, overloaded, a lock or
    serialization conflict): worth a retry, unlike a wrong statement or a violated constraint."""
    if isinstance(exc, OperationalError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _is_connection_failure(exc: BaseException) -> bool:
    if isinstance(exc, PoolTimeoutError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return True
    # Connecting failed when the driver has no SQLSTATE (refused, DNS, SQLite file) or class 08 / 57P0x.
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(("08", "57P0"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _handle_problem)
    app.add_exception_handler(DomainError, _handle_domain_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(OperationalError, _handle_database_error)
    app.add_exception_handler(PoolTimeoutError, _handle_database_error)
    app.add_exception_handler(DBAPIError, _handle_database_error)
    # Registered for Exception, Starlette runs this in its outermost middleware: the answer is a
    # problem+json 500 and the traceback goes to the log only.
    app.add_exception_handler(Exception, _handle_unexpected)


def render_problem(request: Request, exc: ProblemError) -> ProblemResponse:
    """The answer of a ProblemError (middleware that answers before routing renders one with this)."""
    return problem_response(
        request,
        exc.status,
        exc.title,
        exc.detail,
        exc.type_suffix,
        headers=exc.headers,
        extensions=exc.extensions,
    )


async def _handle_problem(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, ProblemError)
    return render_problem(request, exc)


async def _handle_domain_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, DomainError)
    return problem_response(
        request, exc.status, exc.title, exc.detail, exc.type_suffix, extensions=exc.extensions
    )


async def _handle_http_exception(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 404 and detail == _status_phrase(404):
        detail = f"no resource at {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} not allowed on {request.url.path}"
    return problem_response(
        request,
        exc.status_code,
        detail=detail,
        type_suffix=_default_suffix(exc.status_code),
        headers=exc.headers,
    )


async def _handle_validation_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_public_validation_error(error) for error in exc.errors()]
    malformed = any(error["type"] == "json_invalid" for error in errors)
    detail = "the request body is not valid JSON" if malformed else "the request does not match the schema"
    return problem_response(
        request,
        422,
        "Validation failed",
        detail,
        "validation-error",
        extensions={"errors": errors},
    )


async def _handle_database_error(request: Request, exc: Exception) -> ProblemResponse:
    if not is_database_unavailable(exc):
        return await _handle_unexpected(request, exc)
    log.error("database unavailable: %s", type(getattr(exc, "orig", None) or exc).__name__)
    detail = (
        "the database is unreachable; retry later"
        if _is_connection_failure(exc)
        else "the database could not complete the request; retry later"
    )
    return problem_response(
        request,
        503,
        "Service unavailable",
        detail,
        "database-unavailable",
        headers={"Retry-After": str(DB_OUTAGE_RETRY_AFTER_SECONDS)},
    )


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/v1/subjects/{subject_id}`), never the path itself."""
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED_ROUTE


def log_unexpected(scope: Scope, exc: BaseException) -> None:
    """One error line for an unexpected failure: the route template, the exceptions' types (and SQLSTATE)
    and their stack frames. Neither the path nor any exception message goes to the log: a message may
    quote the input (a subject identifier), a row, or a statement's parameters."""
    route = route_template(scope)
    log.error(
        "unhandled error on %s %s: %s\n%s",
        scope.get("method"),
        route,
        _describe(exc),
        redacted_traceback(exc),
        extra={"route": route},
    )


def redacted_traceback(exc: BaseException) -> str:
    """The traceback of `exc` and the exceptions it came from, messages left out."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\n".join(
        "Traceback (most recent call last):\n"
        + "".join(traceback.format_list(traceback.extract_tb(item.__traceback__)))
        + _describe(item)
        for item in reversed(chain)
    )


def _describe(exc: BaseException) -> str:
    kind = type(exc)
    sqlstate = getattr(getattr(exc, "orig", None) or exc, "sqlstate", None)
    return f"{kind.__module__}.{kind.__qualname__}" + (f" (SQLSTATE {sqlstate})" if sqlstate else "")


def internal_error(request: Request) -> ProblemResponse:
    return problem_response(
        request, 500, "Internal server error", "an unexpected error occurred", "internal-error"
    )


async def _handle_unexpected(request: Request, exc: Exception) -> ProblemResponse:
    log_unexpected(request.scope, exc)
    return internal_error(request)


def _public_validation_error(error: dict[str, Any]) -> dict[str, Any]:
    """Location, message and type of one validation error. The rejected input is left out: it may
    carry a data-subject identifier, and the client has it anyway."""
    return {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}


_SUFFIX_BY_STATUS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "unprocessable",
    429: "rate-limited",
    503: "service-unavailable",
}


def _default_suffix(status: int) -> str | None:
    return _SUFFIX_BY_STATUS.get(status)


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
