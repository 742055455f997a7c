"""CSV of deletion requests for the record of processing activities (GDPR art. 30), and the streaming
helpers the audit trail's export shares.

Streamed in keyset pages from a session of its own, so an export of many requests neither holds the
whole file in memory nor outlives the request's session.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.certificates.models import DeletionCertificate
from app.dashboard.queries import RequestFilters, filtered_requests, models_by_request
from app.db import get_session_factory, utcnow
from app.pagination import PageParams, paginate
from app.requests.models import DeletionRequest, Regime, RequestStatus
from app.requests.views import combined_verdict
from app.security.auth import Principal, require_scope
from app.security.scopes import Scope

COLUMNS = (
    "request_id",
    "received_at",
    "regime",
    "status",
    "due_at",
    "completed_at",
    "models",
    "method",
    "verdict",
    "certificate_sha256",
)
BATCH = 500
LIST_SEPARATOR = "; "

router = APIRouter(tags=["deletion requests"])
Reader = Annotated[Principal, Depends(require_scope(Scope.REQUESTS_READ))]


def _when(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else ""


def csv_line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()


def batches(stmt: Select[Any], order: list[Any], size: int = BATCH) -> Iterator[tuple[Session, list[Any]]]:
    """The rows of `stmt` in keyset pages of `size` by `order`, each with the session it was read in
    (a session of the export's own, emptied after each page)."""
    cursor: str | None = None
    with get_session_factory()() as session:
        while True:
            rows, cursor = paginate(session, stmt, order, PageParams(size, cursor))
            yield session, rows
            session.expunge_all()
            if cursor is None:
                return


def csv_download(lines: Iterator[str], file_stem: str) -> StreamingResponse:
    """A streamed CSV attachment named `<file_stem>-<UTC timestamp>.csv`."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        lines,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{file_stem}-{stamp}.csv"'},
    )


def csv_lines(tenant_id: str, filters: RequestFilters) -> Iterator[str]:
    """The header, then one line per request, oldest first."""
    yield csv_line(COLUMNS)
    stmt = filtered_requests(tenant_id, filters, utcnow())
    for session, requests in batches(stmt, [DeletionRequest.received_at, DeletionRequest.id]):
        ids = [request.id for request in requests]
        progress = models_by_request(session, ids)
        certificates = select(DeletionCertificate.request_id, DeletionCertificate.sha256).where(
            DeletionCertificate.request_id.in_(ids)
        )
        digests = {request_id: digest for request_id, digest in session.execute(certificates)}
        for request in requests:
            models = progress.get(request.id, [])
            # The methods that ran; the one asked for while none has run yet.
            methods = list(dict.fromkeys(m.method for m in models if m.method)) or [request.method]
            yield csv_line(
                [
                    request.id,
                    _when(request.received_at),
                    request.regime,
                    request.status,
                    _when(request.due_at),
                    _when(request.completed_at),
                    LIST_SEPARATOR.join(m.model for m in models),
                    LIST_SEPARATOR.join(methods),
                    combined_verdict([m.verdict for m in models]) or "",
                    digests.get(request.id, ""),
                ]
            )


def csv_response(tenant_id: str, filters: RequestFilters) -> StreamingResponse:
    return csv_download(csv_lines(tenant_id, filters), "deletion-requests")


@router.get(
    "/v1/deletion-requests/export.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "one line per request, oldest first"}},
    summary="CSV of deletion requests for the record of processing activities",
)
def export_deletion_requests(
    principal: Reader,
    status: RequestStatus | None = None,
    regime: Regime | None = None,
    model: Annotated[str | None, Query(description="affecting this model (name)")] = None,
    overdue: Annotated[bool, Query(description="only open or failed requests past due_at")] = False,
    action_needed: Annotated[bool, Query(description="only failed requests (someone has to act)")] = False,
) -> StreamingResponse:
    """Columns: request_id, received_at, regime, status, due_at, completed_at, models, method, verdict,
    certificate_sha256 (lists separated by "; ")."""
    filters = RequestFilters(
        status=status, regime=regime, model=model, overdue=overdue, action_needed=action_needed
    )
    return csv_response(principal.tenant_id, filters)
