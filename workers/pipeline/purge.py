"""After a promotion, and a grace period (`settings.purge_grace_seconds`) later: remove what remembers the
forgotten samples.

- Tainted versions: their weights and the learnt parts of their training record leave the disk
  (workers.pipeline.store.purge_files) and `purged_at` is set. A version an alias still serves is left
  alone and reported: taking a serving model away is an operator's decision.
- Forgotten samples: once their request is completed, their content (text, features, label) is erased;
  the row, its subject HMAC and its content hash stay for the audit. A sample some live version of another
  model still trains on (a request limited to some models) keeps its content until that changes.

Both run from the purge task a promotion schedules and from every sweep, so a purge missed or postponed by
the grace period happens later.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from app.audit.service import record
from app.db import for_update, get_session_factory, utcnow
from app.jobs.models import Job, JobRequest
from app.provenance.membership import versions_trained_on
from app.provenance.models import Sample
from app.registry.models import Alias, ModelVersion, VersionStatus
from app.requests.models import DeletionRequest, DeletionRequestSample, RequestStatus
from app.settings import get_settings
from workers.pipeline import store
from workers.pipeline.stages import ACTOR

log = logging.getLogger("lethe.pipeline")

BATCH = 100
DEAD_STATUSES = (VersionStatus.REJECTED, VersionStatus.FAILED)


@dataclass
class PurgeResult:
    purged_versions: list[str] = field(default_factory=list)
    still_served: list[str] = field(default_factory=list)
    erased_samples: int = 0


def run_purge(job_id: str | None = None, now: datetime | None = None) -> PurgeResult:
    """Purge what is due; limited to the job's model and requests when `job_id` is given."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=get_settings().purge_grace_seconds)
    factory = get_session_factory()
    result = PurgeResult()
    model_id = None
    if job_id is not None:
        with factory() as session:
            job = session.get(Job, job_id)
            if job is None:
                return result
            model_id = job.model_id
    for version_id in _due_versions(cutoff, model_id):
        with factory() as session, session.begin():
            _purge_version(session, version_id, now, result)
    with factory() as session, session.begin():
        result.erased_samples = _erase_forgotten(session, cutoff, now, job_id)
    return result


def _due_versions(cutoff: datetime, model_id: str | None) -> list[str]:
    stmt = select(ModelVersion.id).where(
        ModelVersion.tainted.is_(True),
        ModelVersion.purged_at.is_(None),
        ModelVersion.tainted_at <= cutoff,
    )
    if model_id is not None:
        stmt = stmt.where(ModelVersion.model_id == model_id)
    with get_session_factory()() as session:
        return list(session.scalars(stmt.order_by(ModelVersion.tainted_at).limit(BATCH)))


def _purge_version(session: Session, version_id: str, now: datetime, result: PurgeResult) -> None:
    version = session.scalars(
        for_update(select(ModelVersion).where(ModelVersion.id == version_id), skip_locked=True)
    ).one_or_none()
    if version is None or version.purged_at is not None:
        return  # another sweeper has it
    served_by = list(session.scalars(select(Alias.name).where(Alias.version_id == version.id)))
    if served_by:
        log.warning(
            "version %s of model %s is tainted but still served by alias %s: not purged",
            version.version, version.model_id, ", ".join(served_by),
        )  # fmt: skip
        result.still_served.append(version.id)
        return
    shared = (
        session.scalar(
            select(
                exists().where(
                    ModelVersion.artifact_uri == version.artifact_uri,
                    ModelVersion.id != version.id,
                    ModelVersion.tainted.is_(False),
                )
            )
        )
        if version.artifact_uri
        else False
    )
    removed = store.purge_files(version, bool(shared))
    version.purged_at = now
    record(
        session, version.tenant_id, "model_version", version.id, "model_version.purged",
        {"version": version.version, "removed": removed, "reason": version.taint_reason}, ACTOR,
    )  # fmt: skip
    result.purged_versions.append(version.id)


def _erase_forgotten(session: Session, cutoff: datetime, now: datetime, job_id: str | None) -> int:
    requests = select(DeletionRequest.id).where(
        DeletionRequest.status == RequestStatus.COMPLETED, DeletionRequest.completed_at <= cutoff
    )
    if job_id is not None:
        requests = requests.where(
            DeletionRequest.id.in_(select(JobRequest.request_id).where(JobRequest.job_id == job_id))
        )
    rows = session.execute(
        select(DeletionRequestSample.request_id, Sample.id, Sample.tenant_id)
        .join(Sample, Sample.id == DeletionRequestSample.sample_id)
        .where(DeletionRequestSample.request_id.in_(requests), Sample.erased_at.is_(None))
        .limit(BATCH * 50)
    ).all()
    if not rows:
        return 0
    ids_by_tenant: dict[str, set[int]] = defaultdict(set)
    for _, sample_id, tenant_id in rows:
        ids_by_tenant[tenant_id].add(sample_id)
    held: set[int] = set()
    for tenant_id, ids in ids_by_tenant.items():
        for hit in versions_trained_on(session, tenant_id, sample_ids=sorted(ids)):
            if not hit.tainted and hit.status not in DEAD_STATUSES:
                held.add(hit.sample_id)
    erasable = sorted({sample_id for _, sample_id, _ in rows} - held)
    if not erasable:
        return 0
    session.execute(
        update(Sample)
        .where(Sample.id.in_(erasable), Sample.erased_at.is_(None))
        .values(text=None, features=None, label=None, erased_at=now)
    )
    erased = set(erasable)
    per_request: dict[tuple[str, str], int] = defaultdict(int)
    for request_id, sample_id, tenant_id in rows:
        if sample_id in erased:
            per_request[(tenant_id, request_id)] += 1
    for (tenant_id, request_id), count in sorted(per_request.items()):
        record(
            session, tenant_id, "deletion_request", request_id, "deletion_request.content_erased",
            {"samples": count}, ACTOR,
        )  # fmt: skip
    log.info("erased the content of %d forgotten samples", len(erasable))
    return len(erasable)
