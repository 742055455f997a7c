"""What each dashboard page shows, gathered through the same domain services the JSON API uses."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from app.audit.models import AuditEvent
from app.audit.service import ChainCheck, verify_chain
from app.certificates.models import DeletionCertificate
from app.certificates.service import find_certificate, key_metrics
from app.certificates.signing import Verification, public_key_pem, signing_key, verify
from app.dashboard import audit, failures
from app.dashboard.audit import AuditFilters, EntityName
from app.dashboard.failures import FailureView
from app.dashboard.queries import HeldRequest, requests_held_by
from app.db import utcnow
from app.errors import ProblemError
from app.jobs import service as jobs_service
from app.jobs.models import Job, JobAttempt
from app.jobs.schemas import JobOut
from app.pagination import PageParams, paginate
from app.registry import service as registry
from app.registry.models import Alias, Model
from app.registry.schemas import VersionOut
from app.requests import service as requests_service
from app.requests import views
from app.requests.models import OPEN_STATUSES, DeletionRequestModel, RequestStatus
from app.requests.schemas import DeletionRequestOut
from app.security.auth import Principal
from app.security.scopes import Scope

# How the plots of a report written before figures had captions (report.json without "figures") are
# introduced, and described to screen readers.
PLOT_TEXT = {
    "roc": (
        "ROC of the membership-inference attack",
        "ROC curves of the membership-inference attack telling forgotten from held-out samples, for the "
        "served, candidate and reference models; a candidate close to the reference has forgotten.",
    ),
    "loss_hist": (
        "Per-sample loss",
        "Histograms of per-sample loss on forgotten, retained and held-out samples under each model.",
    ),
    "canary_ranks": (
        "Canaries",
        "Exposure of planted canaries (or backdoor trigger success) per model: deleted ones should fall "
        "to the level of never-inserted controls.",
    ),
}
AUDIT_EVENTS_SHOWN = 500
VERSION_ENTITY_TYPE = "model_version"  # as app.registry.service records version events
VERSIONS_SHOWN = 200
ALIAS_CHANGES_SHOWN = 5


@dataclass
class PlotView:
    """A figure of the report: its finding (title), the numbers behind it (caption), and its image
    (url None: not drawn, the caption says why)."""

    name: str
    url: str | None
    title: str
    description: str


@dataclass
class ReportView:
    verdict: str | None
    summary: str | None  # the gate's one plain sentence, when the report has one
    label: str | None
    reasons: list[str]
    rules: list[dict[str, Any]]
    metrics: dict[str, dict[str, Any]]
    plots: list[PlotView]
    not_checked: list[str]
    samples: dict[str, Any]


@dataclass
class JobView:
    job: JobOut
    report: ReportView | None


@dataclass
class CertificateView:
    record: DeletionCertificate
    check: Verification
    certificate: dict[str, Any]
    signature: dict[str, Any]
    public_key_pem: str


@dataclass
class RequestPage:
    request: DeletionRequestOut
    jobs: list[JobView]
    audit_events: list[AuditEvent] | None  # None: the key lacks audit:read
    certificate: CertificateView | None
    is_open: bool
    live_token: str
    failure: FailureView | None  # a failed request's cause, consequence and next step
    can_retry: bool  # failed, and the key may write requests


# How a model's progress reads once its job no longer runs (a stale "done: 5 %" says nothing).
ENDED_PROGRESS_TEXT = {
    RequestStatus.FAILED: "stopped: the job failed",
    RequestStatus.CANCELED: "canceled",
    RequestStatus.COMPLETED: "done",
}


def progress_text(status: str, stage: str | None, progress: int | None) -> str:
    """One model's progress in words, for the page and its live updates."""
    return ENDED_PROGRESS_TEXT.get(status) or f"{stage or status}: {progress or 0} %"


def plot_url(job_id: str, plot: str) -> str:
    return f"/dashboard/jobs/{job_id}/plots/{plot}.png"


def _plots(job_id: str, report: dict[str, Any]) -> list[PlotView]:
    listed = {str(file_name) for file_name in report.get("plots") or []}
    figures = report.get("figures")
    if isinstance(figures, list):
        return [
            PlotView(
                name=str(figure.get("name")),
                url=plot_url(job_id, str(figure["name"])) if figure.get("file") in listed else None,
                title=str(figure.get("title") or ""),
                description=str(figure.get("caption") or ""),
            )
            for figure in figures
            if isinstance(figure, dict) and figure.get("name")
        ]
    plots = []
    for file_name in report.get("plots") or []:
        name = str(file_name).removesuffix(".png")
        title, description = PLOT_TEXT.get(name, (name.replace("_", " "), f"Verification plot {name}."))
        plots.append(PlotView(name, plot_url(job_id, name), title, description))
    return plots


def report_view(job_id: str, report: dict[str, Any]) -> ReportView:
    return ReportView(
        verdict=report.get("verdict"),
        summary=report.get("summary") or None,
        label=report.get("label"),
        reasons=list(report.get("reasons") or []),
        rules=list(report.get("rules") or []),
        metrics=key_metrics(report),
        plots=_plots(job_id, report),
        not_checked=list(report.get("not_checked") or []),
        samples=dict(report.get("samples") or {}),
    )


def _job_view(session: Session, principal: Principal, job_id: str) -> JobView:
    job = jobs_service.get_job(session, principal, job_id)
    try:
        report = report_view(job.id, jobs_service.load_report(job))
    except ProblemError:  # not written yet
        report = None
    return JobView(jobs_service.describe(session, job), report)


def _request_audit(session: Session, request_id: str, tenant_id: str) -> list[AuditEvent]:
    """The request's own events and those of the model versions it moved from and to."""
    version_ids = [
        version_id
        for row in session.execute(
            select(DeletionRequestModel.from_version_id, DeletionRequestModel.to_version_id).where(
                DeletionRequestModel.request_id == request_id
            )
        )
        for version_id in row
        if version_id is not None
    ]
    related = or_(
        and_(AuditEvent.entity_type == requests_service.ENTITY_TYPE, AuditEvent.entity_id == request_id),
        and_(AuditEvent.entity_type == VERSION_ENTITY_TYPE, AuditEvent.entity_id.in_(version_ids)),
    )
    return list(
        session.scalars(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant_id, related)
            .order_by(AuditEvent.seq)
            .limit(AUDIT_EVENTS_SHOWN)
        )
    )


def certificate_view(record: DeletionCertificate) -> CertificateView:
    """The stored certificate, checked against the key this service publishes now."""
    key = signing_key()
    document = json.loads(record.document)
    return CertificateView(
        record=record,
        check=verify(record.document.encode("utf-8"), key.public_key),
        certificate=document["certificate"],
        signature=document["signature"],
        public_key_pem=public_key_pem(key.public_key),
    )


def live_token(session: Session, request: DeletionRequestOut) -> str:
    """Changes when the page's structure must be redrawn (status, attempts, verdicts, report, versions);
    progress and stage alone are updated in place."""
    parts: list[Any] = [request.status, request.certificate_url]
    for m in request.models:
        parts += [m.model, m.status, m.verdict, m.to_version, m.job_id]
    if request.job_ids:
        rows = session.execute(
            select(Job.id, Job.status, Job.report_dir, JobAttempt.id, JobAttempt.verdict, JobAttempt.outcome)
            .outerjoin(JobAttempt, JobAttempt.job_id == Job.id)
            .where(Job.id.in_(request.job_ids))
            .order_by(Job.id, JobAttempt.id)
        )
        parts += [tuple(row) for row in rows]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def request_page(session: Session, principal: Principal, request_id: str) -> RequestPage:
    request = requests_service.get_request(session, principal.tenant_id, request_id)
    detail = views.detailed(session, request)
    record = find_certificate(session, request)
    jobs = [_job_view(session, principal, job_id) for job_id in detail.job_ids]
    failure = failures.explain(detail, [view.job for view in jobs])
    return RequestPage(
        request=detail,
        jobs=jobs,
        audit_events=(
            _request_audit(session, request.id, principal.tenant_id)
            if Scope.AUDIT_READ in principal.scopes
            else None
        ),
        certificate=certificate_view(record) if record is not None else None,
        is_open=request.status in OPEN_STATUSES,
        live_token=live_token(session, detail),
        failure=failure,
        can_retry=failure is not None and Scope.REQUESTS_WRITE in principal.scopes,
    )


def live_state(session: Session, principal: Principal, request_id: str) -> dict[str, Any]:
    """What the request page polls while work runs."""
    request = requests_service.get_request(session, principal.tenant_id, request_id)
    detail = views.detailed(session, request)
    return {
        "status": detail.status,
        "open": request.status in OPEN_STATUSES,
        "token": live_token(session, detail),
        "models": [
            {
                "model": m.model,
                "status": m.status,
                "progress": m.progress or 0,
                "text": progress_text(m.status, m.stage, m.progress),
            }
            for m in detail.models
        ],
    }


# ---------------------------------------------------------------- models


@dataclass
class AliasView:
    name: str
    version: int
    since: datetime
    changes: list[Any]


@dataclass
class ModelView:
    model: Model
    versions: list[VersionOut]
    aliases: list[AliasView]
    served_by: dict[int, list[str]] = field(default_factory=dict)  # version -> alias names
    # served version -> the open or failed requests whose data it still holds
    holding: dict[int, list[HeldRequest]] = field(default_factory=dict)

    @property
    def tainted(self) -> list[VersionOut]:
        return [version for version in self.versions if version.tainted]


def _alias_view(session: Session, model: Model, alias: Alias) -> AliasView:
    out = registry.describe_alias(session, model, alias)
    changes, _ = registry.alias_history(session, alias, PageParams(ALIAS_CHANGES_SHOWN, None))
    # Since when it serves this version: the last move (an alias never moved serves since it was made).
    since = changes[0].changed_at if changes else out.updated_at
    return AliasView(out.name, out.version, since, [registry.describe_change(session, c) for c in changes])


def model_view(session: Session, model: Model) -> ModelView:
    versions, _ = registry.list_versions(session, model, PageParams(VERSIONS_SHOWN, None))
    aliases, _ = registry.list_aliases(session, model, PageParams(VERSIONS_SHOWN, None))
    alias_views = [_alias_view(session, model, alias) for alias in aliases]
    served_by: dict[int, list[str]] = {}
    for alias in alias_views:
        served_by.setdefault(alias.version, []).append(alias.name)
    holding = {
        version.version: held
        for version in versions
        if version.version in served_by and (held := requests_held_by(session, version))
    }
    return ModelView(
        model=model,
        versions=[registry.describe_version(session, model, version) for version in versions],
        aliases=alias_views,
        served_by=served_by,
        holding=holding,
    )


def models_page(
    session: Session, principal: Principal, page: PageParams
) -> tuple[list[ModelView], str | None]:
    models, next_cursor = registry.list_models(session, principal.tenant_id, page)
    return [model_view(session, model) for model in models], next_cursor


# ---------------------------------------------------------------- audit


@dataclass
class AuditRow:
    event: AuditEvent
    entity: EntityName
    detail: str


@dataclass
class AuditPage:
    check: ChainCheck
    rows: list[AuditRow]
    next_cursor: str | None
    checked_at: datetime
    entity_types: list[str]  # the filter's choices
    actions: list[str]


def audit_page(session: Session, principal: Principal, page: PageParams, filters: AuditFilters) -> AuditPage:
    tenant_id = principal.tenant_id
    events, next_cursor = paginate(
        session,
        select(AuditEvent).where(*filters.conditions(tenant_id)),
        [AuditEvent.seq],
        page,
        descending=True,
    )
    names = audit.entity_names(session, tenant_id, events)
    rows = [AuditRow(e, names[e.entity_type, e.entity_id], audit.event_detail(e)) for e in events]
    return AuditPage(
        check=verify_chain(session, tenant_id),
        rows=rows,
        next_cursor=next_cursor,
        checked_at=utcnow(),
        entity_types=audit.entity_types(session, tenant_id),
        actions=audit.recent_actions(session, tenant_id, filters.entity_type),
    )
