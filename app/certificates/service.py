"""Issuing deletion certificates when a request completes, and serving them.

The pipeline calls `issue_certificate(session, request)` in the transaction that marks the request
completed: the certificate then names the audit chain head that includes the completion event. The
signed bytes are stored and served unchanged; their sha256 goes into the audit chain.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.checkpoints import request_checkpoint
from app.audit.service import current_head, record
from app.certificates.models import DeletionCertificate
from app.certificates.signing import KeyMismatch, jws_of_document, sign, signing_key
from app.db import utcnow
from app.errors import ProblemError, conflict
from app.jobs.models import Job, JobAttempt
from app.jobs.service import load_report
from app.provenance.models import Sample
from app.registry.models import Model, ModelVersion
from app.requests.models import DeletionRequest, DeletionRequestModel, DeletionRequestSample, RequestStatus
from app.requests.service import ENTITY_TYPE, get_request

FORMAT = "lethe.deletion-certificate/1"
ISSUED_ACTION = f"{ENTITY_TYPE}.certificate_issued"
DEFAULT_ACTOR = "lethe:certificates"
# Metric names end in the role they measure (checks.metric_name): the candidate's own numbers and its
# differences to the reference and the served version are what the gate decided on.
CANDIDATE_ROLE = "candidate"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _finite(value: Any) -> Any:
    """Numbers as JSON can carry them (the verifier rejects NaN and infinities)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def samples_digest(content_hashes: list[str]) -> str:
    """sha256 over the sorted content hashes of the forgotten samples, one per line: names the data
    without holding it (the content itself is erased)."""
    return hashlib.sha256("\n".join(sorted(content_hashes)).encode()).hexdigest()


def _samples(session: Session, request_id: str) -> dict[str, Any]:
    hashes = list(
        session.scalars(
            select(Sample.content_hash)
            .join(DeletionRequestSample, DeletionRequestSample.sample_id == Sample.id)
            .where(DeletionRequestSample.request_id == request_id)
        )
    )
    return {"count": len(hashes), "digest": samples_digest(hashes)}


def _report(job: Job | None, after: ModelVersion | None) -> dict[str, Any] | None:
    if job is not None:
        try:
            return load_report(job)
        except ProblemError:  # no report written (e.g. an exact method judged without one)
            pass
    if after is not None and after.verification:
        return after.verification
    return None


def key_metrics(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The candidate's estimates from a verification report: value, 95 % interval, sample count."""
    metrics: dict[str, dict[str, Any]] = {}
    for check in (report.get("checks") or {}).values():
        for name, estimate in ((check or {}).get("metrics") or {}).items():
            if not name.rsplit(".", 1)[-1].startswith(CANDIDATE_ROLE) or not isinstance(estimate, dict):
                continue
            metrics[name] = {
                "value": _finite(estimate.get("value")),
                "ci95": _finite(estimate.get("ci95")),
                "n": estimate.get("n"),
            }
    return metrics


def _verification(report: dict[str, Any] | None, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    report = report or {}
    last_verdict = attempts[-1]["verdict"] if attempts else None
    return {
        "verdict": last_verdict or report.get("verdict"),
        "label": report.get("label"),
        # the gate's own sentence, and the rules it could not measure (never read as passed)
        "summary": report.get("summary"),
        "not_checked_rules": list(report.get("not_checked_rules") or []),
        "rules": [
            {"rule": rule.get("rule"), "status": rule.get("status"), "detail": rule.get("detail")}
            for rule in report.get("rules") or []
        ],
        "metrics": key_metrics(report),
    }


def _models(session: Session, request_id: str) -> list[dict[str, Any]]:
    rows = session.execute(
        select(DeletionRequestModel, Model.name)
        .join(Model, Model.id == DeletionRequestModel.model_id)
        .where(DeletionRequestModel.request_id == request_id)
        .order_by(Model.name)
    ).all()
    entries = []
    for row, name in rows:
        before = session.get(ModelVersion, row.from_version_id) if row.from_version_id else None
        after = session.get(ModelVersion, row.to_version_id) if row.to_version_id else None
        job = session.get(Job, row.job_id) if row.job_id else None
        attempts = (
            [
                {"method": a.method, "attempt": a.attempt, "verdict": a.verdict, "outcome": a.outcome}
                for a in session.scalars(
                    select(JobAttempt)
                    .where(JobAttempt.job_id == job.id)
                    .order_by(JobAttempt.attempt, JobAttempt.id)
                )
            ]
            if job is not None
            else []
        )
        entries.append(
            {
                "model": name,
                "status": row.status,
                "version_before": before.version if before else None,
                "version_after": after.version if after else None,
                "artifact_sha256_after": after.artifact_sha256 if after else None,
                "method": (after.method if after else None) or (job.method if job else None),
                "exact": after.exact if after else None,
                "job_id": row.job_id,
                "attempts": attempts,
                "verification": _verification(_report(job, after), attempts),
            }
        )
    return entries


def build_certificate(
    session: Session, request: DeletionRequest, audit_head: tuple[int, str], issued_at: datetime
) -> dict[str, Any]:
    """What the certificate states (before signing)."""
    assert request.completed_at is not None
    extension = (
        {"reason": request.extension_reason, "extended_at": _iso(request.extended_at)}
        if request.extension_reason
        else None
    )
    seq, head_hash = audit_head
    return {
        "format": FORMAT,
        "issued_at": _iso(issued_at),
        "tenant_id": request.tenant_id,
        "request_id": request.id,
        "subject_hmac": request.subject_hmac,
        "regime": request.regime,
        "method_requested": request.method,
        "received_at": _iso(request.received_at),
        "due_at": _iso(request.due_at),
        "completed_at": _iso(request.completed_at),
        "on_time": request.completed_at <= request.due_at,
        "extension": extension,
        "samples": _samples(session, request.id),
        "models": _models(session, request.id),
        "audit_head": {"seq": seq, "hash": head_hash},
    }


def issue_certificate(
    session: Session, request: DeletionRequest, *, actor: str = DEFAULT_ACTOR
) -> DeletionCertificate:
    """Sign and store the certificate of a completed request, with its audit event; no commit. Calling
    it again answers the certificate already issued."""
    if request.status != RequestStatus.COMPLETED or request.completed_at is None:
        raise ValueError(f"request {request.id} is {request.status}: certificates are issued on completion")
    # Chains this transaction's events (the completion's among them) and keeps the tenant's head locked
    # until commit, so concurrent issuers of one request queue here.
    head = current_head(session, request.tenant_id)
    existing = session.get(DeletionCertificate, request.id)
    if existing is not None:
        return existing
    issued_at = utcnow()
    key = signing_key()
    document = sign(build_certificate(session, request, head, issued_at), key)
    digest = hashlib.sha256(document).hexdigest()
    certificate = DeletionCertificate(
        request_id=request.id,
        tenant_id=request.tenant_id,
        issued_at=issued_at,
        key_id=key.key_id,
        sha256=digest,
        document=document.decode("utf-8"),
    )
    session.add(certificate)
    record(
        session,
        request.tenant_id,
        ENTITY_TYPE,
        request.id,
        ISSUED_ACTION,
        {"sha256": digest, "key_id": key.key_id, "audit_head_seq": head[0]},
        actor,
    )
    request_checkpoint(session, request.tenant_id)  # the head with this event, anchored outside the database
    session.flush()
    return certificate


def find_certificate(session: Session, request: DeletionRequest) -> DeletionCertificate | None:
    return session.get(DeletionCertificate, request.id)


def get_certificate(session: Session, tenant_id: str, request_id: str) -> DeletionCertificate:
    """The tenant's certificate of `request_id`; 404 problem for another tenant's request and until the
    request has completed."""
    request = get_request(session, tenant_id, request_id)
    certificate = find_certificate(session, request)
    if certificate is None:
        raise ProblemError(
            404,
            "Not found",
            f"deletion request {request_id} is {request.status}: its certificate is issued when it completes",
            "not-found",
        )
    return certificate


def get_certificate_jws(session: Session, tenant_id: str, request_id: str) -> tuple[DeletionCertificate, str]:
    """The certificate and its compact JWS form; 409 problem when this service's key did not sign it (the
    JSON form still verifies against the key that did)."""
    certificate = get_certificate(session, tenant_id, request_id)
    try:
        return certificate, jws_of_document(certificate.document.encode("utf-8"), signing_key())
    except KeyMismatch as exc:
        raise conflict(f"{exc}: the JWS form is signed with the issuing key, fetch the JSON form") from exc
