"""Reading jobs and their verification reports (the workers write both)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.errors import forbidden, not_found
from app.jobs.models import Job, JobAttempt, JobKind, JobRequest
from app.jobs.schemas import JobOut, MethodAttempt
from app.registry.models import Model, ModelVersion
from app.security.auth import Principal
from app.security.scopes import Scope
from app.settings import get_settings

# The verification report's file in a job's report_dir (workers.verification.report writes it).
REPORT_FILE = "report.json"
# A plot is served only when the report lists it and its name is a plain word: nothing else in the
# report directory, and no path, can be reached through the plot URL.
PLOT_NAME = re.compile(r"[a-z0-9_]{1,64}")
READ_SCOPE = {JobKind.UNLEARN: Scope.REQUESTS_READ, JobKind.TRAIN: Scope.MODELS_READ}


def report_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}/report"


def get_job(session: Session, principal: Principal, job_id: str) -> Job:
    """The caller's job; 404 for another tenant's, 403 without the scope of its kind (unlearning jobs:
    requests:read, training jobs: models:read)."""
    if not principal.scopes & set(READ_SCOPE.values()):
        raise forbidden("reading jobs needs requests:read or models:read", "missing-scope")
    job = session.scalars(
        select(Job).where(Job.id == job_id, Job.tenant_id == principal.tenant_id)
    ).one_or_none()
    if job is None:
        raise not_found("job", job_id)
    needed = READ_SCOPE.get(JobKind(job.kind), Scope.REQUESTS_READ)
    if needed not in principal.scopes:
        raise forbidden(f"this API key lacks the scope {needed}", "missing-scope")
    return job


def _seconds(start: Any, end: Any) -> float | None:
    return round((end - start).total_seconds(), 3) if start is not None and end is not None else None


def report_dir(job: Job) -> Path | None:
    if not job.report_dir:
        return None
    directory = Path(job.report_dir)
    return directory if directory.is_absolute() else Path(get_settings().report_root) / directory


def load_report(job: Job) -> dict[str, Any]:
    directory = report_dir(job)
    path = directory / REPORT_FILE if directory is not None else None
    if path is None or not path.is_file():
        raise not_found(f"the verification report of job {job.id}")
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # caught while being written: not there yet
        raise not_found(f"the verification report of job {job.id}") from exc
    if not isinstance(report, dict):
        raise not_found(f"the verification report of job {job.id}")
    return report


def plot_path(job: Job, plot: str) -> Path:
    """The PNG of `plot`, when the report lists it; 404 otherwise."""
    if not PLOT_NAME.fullmatch(plot):
        raise not_found("plot", plot)
    report = load_report(job)
    file_name = f"{plot}.png"
    if file_name not in report.get("plots", []):
        raise not_found(f"plot {plot} of job", job.id)
    directory = report_dir(job)
    assert directory is not None  # load_report found the report in it
    path = (directory / file_name).resolve()
    if path.parent != directory.resolve() or not path.is_file():
        raise not_found(f"plot {plot} of job", job.id)
    return path


def describe(session: Session, job: Job) -> JobOut:
    model_name = session.scalar(select(Model.name).where(Model.id == job.model_id)) or ""
    request_ids = list(
        session.scalars(
            select(JobRequest.request_id).where(JobRequest.job_id == job.id).order_by(JobRequest.request_id)
        )
    )
    candidate = (
        session.scalar(select(ModelVersion.version).where(ModelVersion.id == job.candidate_version_id))
        if job.candidate_version_id
        else None
    )
    attempts = session.scalars(
        select(JobAttempt).where(JobAttempt.job_id == job.id).order_by(JobAttempt.attempt, JobAttempt.id)
    )
    directory = report_dir(job)
    has_report = directory is not None and (directory / REPORT_FILE).is_file()
    now = utcnow()
    return JobOut(
        id=job.id,
        kind=job.kind,
        model=model_name,
        status=job.status,
        stage=job.stage,
        progress=job.progress,
        method=job.method,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
        queued_seconds=_seconds(job.created_at, job.started_at),
        running_seconds=_seconds(job.started_at, job.finished_at or (now if job.started_at else None)),
        error=job.error,
        request_ids=request_ids,
        candidate_version=candidate,
        report_url=report_url(job.id) if has_report else None,
        method_attempts=[
            MethodAttempt(
                method=a.method,
                attempt=a.attempt,
                started_at=a.started_at,
                finished_at=a.finished_at,
                seconds=_seconds(a.started_at, a.finished_at),
                verdict=a.verdict,
                outcome=a.outcome,
                details=a.details or {},
            )
            for a in attempts
        ],
    )
