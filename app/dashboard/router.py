"""The compliance dashboard at /dashboard: server-rendered pages over the same services as the JSON API.

Pages work without JavaScript; a small script refreshes the request list and a request's progress while
work runs. Signed in with an API key (read scopes suffice) exchanged for a session cookie (see auth.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from app.certificates.service import get_certificate
from app.dashboard import audit as audit_views
from app.dashboard import failures, pages, text
from app.dashboard.audit import AuditFilters
from app.dashboard.auth import (
    HOME_PATH,
    LOGIN_PATH,
    LoginRequired,
    Viewer,
    clear_session_cookie,
    require_same_origin,
    safe_next,
    set_session_cookie,
)
from app.dashboard.export import csv_response
from app.dashboard.export import router as export_router
from app.dashboard.queries import RequestFilters, action_needed_count, filtered_requests, models_by_request
from app.db import SessionDep, utcnow
from app.domain import DomainError
from app.errors import ProblemError
from app.jobs import service as jobs_service
from app.pagination import PageParams, paginate
from app.requests import service as requests_service
from app.requests import views
from app.requests.models import (
    ACTION_NEEDED_STATUSES,
    DEADLINE_STATUSES,
    OPEN_STATUSES,
    DeletionRequest,
    Regime,
    RequestStatus,
)
from app.requests.views import combined_verdict
from app.security.keys import find_active_key
from app.security.scopes import Scope
from app.security.subjects import subject_hmac
from app.settings import get_settings

HERE = Path(__file__).parent
STATIC_FILES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
LOGIN_SCOPE = Scope.REQUESTS_READ
MAX_FORM_BYTES = 8192
REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer, browsers send "Origin: null" on the forms' posts.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "—"


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["when"] = _when
templates.env.globals["open_statuses"] = OPEN_STATUSES
templates.env.globals["deadline_statuses"] = DEADLINE_STATUSES
templates.env.globals["action_needed_statuses"] = ACTION_NEEDED_STATUSES
templates.env.globals["progress_text"] = pages.progress_text
templates.env.globals["redact"] = text.redact
templates.env.globals["timeline_detail"] = failures.timeline_detail


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    principal = getattr(request.state, "principal", None)
    response = templates.TemplateResponse(
        request, name, {"principal": principal, "scopes": Scope, **context}, status_code=status
    )
    response.headers.update(SECURITY_HEADERS)
    return response


class DashboardRoute(APIRoute):
    """Dashboard routes answer HTML: a redirect to the login page without a session, an error page for
    a problem (a missing request, a missing scope, a refused change) instead of problem+json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                target = f"{LOGIN_PATH}?{urlencode({'next': request.url.path})}"
                return RedirectResponse(target, status_code=303)
            except (ProblemError, DomainError) as problem:
                return render(
                    request, "error.html", {"title": problem.title, "detail": problem.detail}, problem.status
                )

        return handle


router = APIRouter(route_class=DashboardRoute, include_in_schema=False)
pages_router = APIRouter(prefix="/dashboard", route_class=DashboardRoute, include_in_schema=False)


async def form_fields(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (first value of each)."""
    require_same_origin(request)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ProblemError(413, "Content too large", "the form is too large", "too-large")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20)
    return {name: values[0] for name, values in parsed.items()}


Form = Annotated[dict[str, str], Depends(form_fields)]


# ---------------------------------------------------------------- sign-in


@pages_router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    if name not in STATIC_FILES:
        raise ProblemError(404, "Not found", f"no file {name}", "not-found")
    return FileResponse(
        HERE / "static" / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"}
    )


@pages_router.get("")
def dashboard_home() -> RedirectResponse:
    return RedirectResponse(HOME_PATH, status_code=303)


@pages_router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    return render(request, "login.html", {"next": safe_next(next), "error": None})


@pages_router.post("/login")
def login(request: Request, form: Form, session: SessionDep) -> Response:
    next_path = safe_next(form.get("next"))
    api_key = find_active_key(session, form.get("key", "").strip())
    if api_key is None:
        error = "This API key is not valid (or has been revoked)."
        return render(request, "login.html", {"next": next_path, "error": error}, 401)
    if LOGIN_SCOPE not in api_key.scopes:
        error = f"This API key lacks the scope {LOGIN_SCOPE}, which the dashboard needs."
        return render(request, "login.html", {"next": next_path, "error": error}, 403)
    response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(response, api_key)
    return response


@pages_router.post("/logout")
def logout(form: Form) -> Response:
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    clear_session_cookie(response)
    return response


# ---------------------------------------------------------------- requests


def _filters(
    status: str | None,
    regime: str | None,
    model: str | None,
    overdue: str | None,
    subject: str | None,
    action_needed: str | None = None,
) -> RequestFilters:
    """Filters from the query string; unknown values are ignored rather than failing the page."""
    return RequestFilters(
        status=RequestStatus(status) if status in set(RequestStatus) else None,
        regime=Regime(regime) if regime in set(Regime) else None,
        model=model.strip() or None if model else None,
        overdue=overdue == "1",
        action_needed=action_needed == "1",
        subject_hmac=subject if subject and re.fullmatch(r"[0-9a-f]{64}", subject) else None,
    )


def _filter_query(filters: RequestFilters) -> dict[str, str]:
    values = {
        "status": filters.status or "",
        "regime": filters.regime or "",
        "model": filters.model or "",
        "overdue": "1" if filters.overdue else "",
        "action_needed": "1" if filters.action_needed else "",
        "subject": filters.subject_hmac or "",
    }
    return {name: value for name, value in values.items() if value}


@pages_router.get("/requests")
def requests_page(
    request: Request,
    session: SessionDep,
    principal: Viewer,
    status: str | None = None,
    regime: str | None = None,
    model: str | None = None,
    overdue: str | None = None,
    subject: str | None = None,
    action_needed: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int | None, Query(ge=1, le=200)] = None,
) -> Response:
    filters = _filters(status, regime, model, overdue, subject, action_needed)
    now = utcnow()
    page = PageParams(limit or get_settings().default_page_size, cursor)
    items, next_cursor = paginate(
        session,
        filtered_requests(principal.tenant_id, filters, now),
        [DeletionRequest.received_at, DeletionRequest.id],
        page,
        descending=True,
    )
    progress = models_by_request(session, [item.id for item in items])
    rows = []
    for item in items:
        models = progress.get(item.id, [])
        rows.append(
            {
                **views.summary(item, now),
                "models": models,
                "verdict": combined_verdict([m.verdict for m in models]),
            }
        )
    query = _filter_query(filters)
    return render(
        request,
        "requests.html",
        {
            "rows": rows,
            "filters": filters,
            "statuses": list(RequestStatus),
            "regimes": list(Regime),
            "next_url": f"?{urlencode({**query, 'cursor': next_cursor})}" if next_cursor else None,
            "first_url": f"?{urlencode(query)}" if cursor else None,
            "export_url": f"/dashboard/export.csv?{urlencode(query)}" if query else "/dashboard/export.csv",
            "any_open": any(row["status"] in OPEN_STATUSES for row in rows),
            "action_needed": action_needed_count(session, principal.tenant_id),
        },
    )


@pages_router.post("/search")
def search(form: Form, session: SessionDep, principal: Viewer) -> Response:
    """A request id opens that request; anything else is taken as a data-subject id, hashed here and
    never echoed (the browser is sent to the list filtered by the HMAC, not by the id)."""
    query = form.get("q", "").strip()
    if not query:
        return RedirectResponse(HOME_PATH, status_code=303)
    if REQUEST_ID.fullmatch(query.lower()):
        try:
            found = requests_service.get_request(session, principal.tenant_id, query.lower())
            return RedirectResponse(f"/dashboard/requests/{found.id}", status_code=303)
        except ProblemError:
            pass  # not a request of this tenant: it may still be a subject id shaped like a uuid
    return RedirectResponse(f"{HOME_PATH}?{urlencode({'subject': subject_hmac(query)})}", status_code=303)


@pages_router.get("/requests/{request_id}")
def request_detail(
    request: Request, request_id: str, session: SessionDep, principal: Viewer, retried: str | None = None
) -> Response:
    page = pages.request_page(session, principal, request_id)
    return render(request, "request.html", {"page": page, "r": page.request, "retried": retried == "1"})


@pages_router.post("/requests/{request_id}/retry")
def retry(request: Request, request_id: str, form: Form, session: SessionDep, principal: Viewer) -> Response:
    """The request page's retry button (POST /v1/deletion-requests/{id}:retry for the dashboard)."""
    if Scope.REQUESTS_WRITE not in principal.scopes:
        return _missing_scope(request, Scope.REQUESTS_WRITE)
    requests_service.retry_request(session, principal, request_id)
    session.commit()
    return RedirectResponse(f"/dashboard/requests/{request_id}?retried=1", status_code=303)


@pages_router.get("/requests/{request_id}/live")
def request_live(request_id: str, session: SessionDep, principal: Viewer) -> JSONResponse:
    return JSONResponse(
        pages.live_state(session, principal, request_id), headers={"Cache-Control": "no-store"}
    )


@pages_router.get("/requests/{request_id}/certificate")
def certificate_page(request: Request, request_id: str, session: SessionDep, principal: Viewer) -> Response:
    view = pages.certificate_view(get_certificate(session, principal.tenant_id, request_id))
    return render(request, "certificate.html", {"view": view, "c": view.certificate})


@pages_router.get("/requests/{request_id}/certificate.json")
def certificate_download(request_id: str, session: SessionDep, principal: Viewer) -> Response:
    certificate = get_certificate(session, principal.tenant_id, request_id)
    file_name = f"deletion-certificate-{certificate.request_id}.json"
    return Response(
        certificate.document.encode("utf-8"),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{file_name}"', "Cache-Control": "no-store"},
    )


@pages_router.get("/jobs/{job_id}/plots/{plot}.png")
def plot(job_id: str, plot: str, session: SessionDep, principal: Viewer) -> FileResponse:
    path = jobs_service.plot_path(jobs_service.get_job(session, principal, job_id), plot)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@pages_router.get("/export.csv")
def export(
    principal: Viewer,
    status: str | None = None,
    regime: str | None = None,
    model: str | None = None,
    overdue: str | None = None,
    subject: str | None = None,
    action_needed: str | None = None,
) -> Response:
    return csv_response(principal.tenant_id, _filters(status, regime, model, overdue, subject, action_needed))


# ---------------------------------------------------------------- models and audit


def _missing_scope(request: Request, scope: str) -> Response:
    detail = f"This API key lacks the scope {scope}; sign in with a key that has it to see this page."
    return render(request, "error.html", {"title": "Forbidden", "detail": detail}, 403)


@pages_router.get("/models")
def models(
    request: Request,
    session: SessionDep,
    principal: Viewer,
    cursor: str | None = None,
) -> Response:
    if Scope.MODELS_READ not in principal.scopes:
        return _missing_scope(request, Scope.MODELS_READ)
    model_views, next_cursor = pages.models_page(session, principal, PageParams(20, cursor))
    return render(
        request,
        "models.html",
        {
            "models": model_views,
            "next_url": f"?{urlencode({'cursor': next_cursor})}" if next_cursor else None,
        },
    )


def _day(value: str | None) -> date | None:
    """A yyyy-mm-dd date from the query string; anything else is ignored rather than failing the page."""
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _audit_query(
    entity_type: str | None, action: str | None, since: str | None, until: str | None
) -> tuple[AuditFilters, dict[str, str]]:
    """The audit page's filters, and the query string that repeats them."""
    start, end = _day(since), _day(until)
    filters = AuditFilters(entity_type or None, None, action or None, *audit_views.day_range(start, end))
    values = {
        "entity_type": entity_type or "",
        "action": action or "",
        "since": start.isoformat() if start else "",
        "until": end.isoformat() if end else "",
    }
    return filters, {name: value for name, value in values.items() if value}


@pages_router.get("/audit")
def audit(
    request: Request,
    session: SessionDep,
    principal: Viewer,
    entity_type: str | None = None,
    action: str | None = None,
    since: str | None = None,
    until: str | None = None,
    cursor: str | None = None,
) -> Response:
    if Scope.AUDIT_READ not in principal.scopes:
        return _missing_scope(request, Scope.AUDIT_READ)
    filters, query = _audit_query(entity_type, action, since, until)
    page = pages.audit_page(session, principal, PageParams(50, cursor), filters)
    return render(
        request,
        "audit.html",
        {
            "page": page,
            "query": query,
            "entity_labels": audit_views.ENTITY_LABELS,
            "next_url": f"?{urlencode({**query, 'cursor': page.next_cursor})}" if page.next_cursor else None,
            "export_url": f"/dashboard/audit.csv?{urlencode(query)}" if query else "/dashboard/audit.csv",
        },
    )


@pages_router.get("/audit.csv")
def audit_export(
    request: Request,
    principal: Viewer,
    entity_type: str | None = None,
    action: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Response:
    if Scope.AUDIT_READ not in principal.scopes:
        return _missing_scope(request, Scope.AUDIT_READ)
    filters, _ = _audit_query(entity_type, action, since, until)
    return audit_views.csv_response(principal.tenant_id, filters)


# The CSV exports' /v1 routes first: `/v1/deletion-requests/{id}` would otherwise take "export.csv".
router.include_router(export_router)
router.include_router(audit_views.router)
router.include_router(pages_router)
