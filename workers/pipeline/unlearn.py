"""The unlearning stage: claim the job, freeze its batch, run the current method of the chain on the served
version and store the candidate.

The first claim comes once the batching window has closed (a task arriving earlier schedules itself for
then), takes the model's unlearning lock (no other running unlearn job on the model, checked under the
model row's lock), drops requests canceled meanwhile, fixes the version to unlearn (the alias target) and
the chain. The method's progress goes into the job row. The
candidate becomes a `candidate` version (artifact, manifest, registry row with its training set = the
served version's minus the forgotten samples) in the same transaction that hands the job to verification.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import get_session_factory, utcnow
from app.jobs.models import Job, JobKind
from app.jobs.params import UnlearnParams
from app.provenance.membership import training_sample_ids
from app.provenance.models import Sample
from app.registry.methods import MethodName
from app.registry.models import PROMOTABLE_STATUSES, Alias, Model, ModelVersion, VersionStatus
from app.registry.policy import ModelPolicy, model_policy
from app.registry.service import create_derived_version
from app.requests.lifecycle import move_models
from app.requests.models import ModelStatus, RequestStatus
from workers.pipeline import data, store
from workers.pipeline.chain import Capabilities, choose_chain, is_exact
from workers.pipeline.escalation import (
    CANDIDATE,
    ERROR,
    UNAVAILABLE,
    escalate,
    finish_attempt,
    start_attempt,
)
from workers.pipeline.jobs import (
    audit_job,
    cancel_job,
    claimed_job,
    enqueue_stage,
    fail_job,
    job_requests,
    job_sample_ids,
    running_unlearn_job,
)
from workers.pipeline.leases import (
    Heartbeat,
    LeaseLost,
    check_holder,
    lease_delta,
    lock_job,
    lock_model,
    release_lease,
)
from workers.pipeline.promote import complete_deletion
from workers.pipeline.stages import ACTOR, Stage

log = logging.getLogger("lethe.pipeline")

# Progress of an unlearn job: loading 0-5, the method 5-60, verification 60-95, promotion 95-100.
METHOD_PROGRESS = (5, 60)


def run_unlearn(job_id: str) -> datetime | None:
    """Carry the job on; answers when to look again instead (its batching window is still open)."""
    reopen = _window_closes_at(job_id)
    if reopen is not None:
        return reopen
    stages = {Stage.QUEUED, Stage.UNLEARNING}
    with claimed_job(job_id, JobKind.UNLEARN, stages, may_claim=_model_free) as claim:
        if claim is None:
            return None
        session, job, token = claim.session, claim.job, claim.token
        if job.stage == Stage.QUEUED and not _start(session, job):
            return None
        if UnlearnParams.of(job).base_version_id is None and not choose_base(session, job):
            return None  # no version to unlearn, or nothing to unlearn: the job ended
        attempt = start_attempt(session, job)
        attempt_id = attempt.id
    try:
        _run_method(job_id, token, attempt_id)
    except LeaseLost:
        log.warning("job %s: lost its lease during unlearning; the new holder carries on", job_id)
    return None


def _window_closes_at(job_id: str) -> datetime | None:
    """Requests keep joining an unclaimed batch until its window closes; when that is still ahead."""
    with get_session_factory()() as session:
        job = session.get(Job, job_id)
        if job is None or job.stage != Stage.QUEUED:
            return None
        closes = UnlearnParams.of(job).not_before
    return closes if closes is not None and closes > utcnow() else None


def _model_free(session: Session, job: Job) -> bool:
    """A first claim takes the model's unlearning lock: no other running unlearn job on it."""
    if job.stage == Stage.QUEUED:
        lock_model(session, job.model_id)
        holder = running_unlearn_job(session, job.model_id, other_than=job.id)
        if holder is not None:
            # The model is being unlearned by another job, which sends this one when it ends.
            job.lease_expires_at = utcnow() + lease_delta()
            log.info("job %s waits: model busy with job %s", job.id, holder.id)
            return False
    return True


def served_version(session: Session, model: Model) -> tuple[str, ModelVersion | None, int | None]:
    """(alias name, the version it serves, its number); without the alias the newest promotable version
    (the alias is then created at promotion)."""
    alias_name = model_policy(model.policy).alias
    alias = session.scalars(select(Alias).where(Alias.model_id == model.id, Alias.name == alias_name)).first()
    if alias is not None:
        version = session.get(ModelVersion, alias.version_id)
        return alias_name, version, version.version if version else None
    newest = session.scalars(
        select(ModelVersion)
        .where(
            ModelVersion.model_id == model.id,
            ModelVersion.status.in_(list(PROMOTABLE_STATUSES)),
            ModelVersion.tainted.is_(False),
            ModelVersion.purged_at.is_(None),
        )
        .order_by(ModelVersion.version.desc())
        .limit(1)
    ).first()
    return alias_name, newest, None


def _start(session: Session, job: Job) -> bool:
    """First claim: freeze the batch and fix the served version and the chain. False when the job ended."""
    requests = job_requests(session, job, lock=True)
    live = [r for r in requests if r.status not in (RequestStatus.CANCELED, RequestStatus.FAILED)]
    if not live:
        cancel_job(session, job, "every request of the batch was canceled before unlearning")
        return False
    params = UnlearnParams.of(job)
    params.request_ids, params.batch_frozen_at = [r.id for r in live], utcnow()
    params.write(job)
    job.stage = Stage.UNLEARNING
    audit_job(session, job, "started", {"requests": len(live)})
    return True


def choose_base(session: Session, job: Job) -> bool:
    """Fix the version to unlearn (the alias target now) and the method chain for it."""
    model = session.get(Model, job.model_id)
    assert model is not None
    try:
        policy = model_policy(model.policy)
    except ValueError as invalid:  # a policy stored before policies were validated
        fail_job(session, job, f"model {model.name} has an invalid policy: {invalid}")
        return False
    alias_name, base, alias_version = served_version(session, model)
    if base is None:
        fail_job(
            session, job, f"model {model.name} has no version that may serve (none registered or verified)"
        )
        return False
    lineage = store.lineage_record(session, base)
    capabilities = Capabilities(
        task=model.task,
        has_checkpoints=lineage is not None and lineage[1].has_checkpoints,
        has_recipe=lineage is not None or policy.retrain_recipe is not None,
        sharded=lineage is not None and lineage[1].num_shards > 0,
    )
    params = UnlearnParams.of(job)
    chain = choose_chain(params.requested_method, policy, capabilities)
    params.alias, params.alias_version, params.base_version_id, params.base_version = (
        alias_name,
        alias_version,
        base.id,
        base.version,
    )
    params.chain, params.chain_index = chain, 0
    params.write(job)
    job.method = chain[0]
    detail = {"job_id": job.id, "method": job.method}
    move_models(session, job, ModelStatus.UNLEARNING, actor=ACTOR, detail=detail, from_version_id=base.id)
    if not _holds_any(session, base, job_sample_ids(session, job)):
        # The served version never saw these samples: nothing to unlearn, only older versions to taint.
        complete_deletion(session, job, model, base, None)
        return False
    return True


def _holds_any(session: Session, version: ModelVersion, sample_ids: list[int]) -> bool:
    held = training_sample_ids(version).where(Sample.id.in_(sample_ids)).limit(1)
    return bool(sample_ids) and session.scalar(held) is not None


# --------------------------------------------------------------------------------------- the method


def _run_method(job_id: str, token: str, attempt_id: int) -> None:
    from workers.unlearning.base import MethodUnavailable, UnlearningContext, get_method

    factory = get_session_factory()
    with factory() as session:
        job = session.get(Job, job_id)
        assert job is not None
        base = session.get(ModelVersion, UnlearnParams.of(job).base_version_id)
        model = session.get(Model, job.model_id)
        assert base is not None and model is not None
        method_name = job.method or ""
        policy = model_policy(model.policy)
        sets = data.build_sets(session, base, job_sample_ids(session, job))
        record, extra_forget = record_for(session, base, is_exact(method_name, policy), set(sets.forget_ids))
        targeting = targeting_source(session, base)
    started = time.perf_counter()
    scratch: Path | None = None
    with Heartbeat(job_id, token) as heartbeat:
        heartbeat.progress(METHOD_PROGRESS[0], force=True)
        low, high = METHOD_PROGRESS
        context = UnlearningContext(
            training=record,
            seed=0,
            progress=lambda fraction, _m: heartbeat.progress(low + (high - low) * fraction),
            targeting=targeting,
        )
        try:
            method = get_method(method_name, **method_config(policy, method_name, record))
            if method.records_provenance:  # the result's own record serves the next deletion
                scratch = store.scratch_directory(f"{method_name}-{job_id[:8]}")
                context.workdir = scratch
            served = store.load_adapter_of(base)
            result = method.unlearn(
                served, [*sets.forget, *extra_forget], sets.retain, sets.validation, context
            )
            heartbeat.check()
            new_record = result.details.get("training_record")
            uri, sha = store.store_version(
                result.adapter,
                parent=base,
                method=result.method,
                record=new_record if new_record is not None and result.exact else None,
                metrics={"unlearning_seconds": result.seconds},
            )
        except LeaseLost:
            raise
        except MethodUnavailable as exc:
            _attempt_failed(job_id, token, attempt_id, UNAVAILABLE, str(exc), sets.describe())
            return
        except Exception as exc:  # a method that crashes must not end the chain: the next one runs
            log.exception("job %s: %s failed", job_id, method_name)
            _attempt_failed(job_id, token, attempt_id, ERROR, f"{type(exc).__name__}: {exc}", sets.describe())
            return
        finally:
            if scratch is not None:  # kept records were moved out of it
                shutil.rmtree(scratch, ignore_errors=True)
    _store_candidate(job_id, token, attempt_id, result, uri, sha, sets, time.perf_counter() - started)


def method_config(policy: ModelPolicy, method: str, record: Any | None) -> dict[str, Any]:
    """The policy's settings of `method`; a model trained elsewhere retrains with the policy's recipe."""
    config = policy.config_of(method)
    if method == MethodName.RETRAIN and record is None and policy.retrain_recipe is not None:
        config.setdefault("recipe", policy.retrain_recipe.model_dump(exclude_unset=True))
    return config


def targeting_source(session: Session, base: ModelVersion) -> Any | None:
    """Where the per-sample targets' references come from: the nearest training record of the lineage (an
    approximate version has none of its own, but its ancestor's recipe and architecture train references
    on today's data), cached under that version's verification directory, so the lineage pays once and
    purging that version removes them with what else it learnt. None: no record anywhere in the lineage
    (a model trained elsewhere), and the methods fall back (workers/unlearning/targets.py)."""
    from workers.unlearning.targets import TargetingSource

    found = store.lineage_record(session, base)
    if found is None:
        return None
    version, record = found
    return TargetingSource(record, store.verification_cache(version) / "targeting")


def record_for(
    session: Session, base: ModelVersion, exact: bool, forget_ids: set[int]
) -> tuple[Any | None, list[Any]]:
    """The training record a method may use and the already-forgotten samples it must also leave out.

    Approximate methods get the served version's own record only. Exact methods may restart from a record
    of an ancestor: they must then exclude every sample that record trained on and the served version no
    longer holds (known by id only: their content may be erased)."""
    own = store.own_record(base)
    if own is not None or not exact:
        return own, []
    found = store.lineage_record(session, base)
    if found is None:
        return None, []
    _, record = found
    trained = data.trained_ids(session, base)
    gone = [int(sid) for sid in record.sample_ids if int(sid) not in trained and int(sid) not in forget_ids]
    rows = data.load_rows(session, gone)
    return record, [data.placeholder_sample(row.id, row.subject_hmac) for row in rows]


def _attempt_failed(
    job_id: str, token: str, attempt_id: int, outcome: str, reason: str, sets: dict[str, Any]
) -> None:
    from app.jobs.models import JobAttempt

    with get_session_factory()() as session, session.begin():
        job = lock_job(session, job_id)
        assert job is not None
        check_holder(job, token)
        job_requests(session, job, lock=True)  # before any audit row: the lock order of every stage
        attempt = session.get(JobAttempt, attempt_id)
        assert attempt is not None
        finish_attempt(session, job, attempt, outcome, None, {"reason": reason[:2000], "sets": sets})
        escalate(session, job, token, f"{attempt.method}: {reason[:300]}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if k != "training_record"}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return str(value)


def _store_candidate(
    job_id: str,
    token: str,
    attempt_id: int,
    result: Any,
    uri: str,
    sha: str,
    sets: data.DataSets,
    seconds: float,
) -> None:
    from app.jobs.models import JobAttempt

    with get_session_factory()() as session, session.begin():
        job = lock_job(session, job_id)
        assert job is not None
        check_holder(job, token)
        # lock order of every stage: job, model (taken again by create_derived_version), requests, audit
        lock_model(session, job.model_id)
        job_requests(session, job, lock=True)
        base = session.get(ModelVersion, UnlearnParams.of(job).base_version_id)
        attempt = session.get(JobAttempt, attempt_id)
        assert base is not None and attempt is not None
        candidate = create_derived_version(
            session,
            base,
            sets.forget_ids,
            ACTOR,
            status=VersionStatus.CANDIDATE,
            method=result.method,
            exact=bool(result.exact),
            artifact_uri=uri,
            artifact_sha256=sha,
            metrics={"unlearning_seconds": round(result.seconds, 3), "job_id": job.id},
        )
        details = {
            "candidate_version": candidate.version,
            "exact": bool(result.exact),
            "unlearning_seconds": round(result.seconds, 3),
            "stage_seconds": round(seconds, 3),
            "sets": sets.describe(),
            "steps": _jsonable(result.steps[-200:]),
            "method_details": _jsonable(result.details),
        }
        # the attempt ends with the gate's verdict; until then it holds its candidate
        attempt.outcome = CANDIDATE
        attempt.details = {**attempt.details, **details}
        audit_job(
            session, job, "candidate_created",
            {"method": result.method, "attempt": attempt.attempt, "candidate_version": candidate.version,
             "exact": bool(result.exact)},
        )  # fmt: skip
        job.candidate_version_id = candidate.id
        job.stage = Stage.VERIFYING
        job.progress = METHOD_PROGRESS[1]
        detail = {"job_id": job.id, "candidate_version": candidate.version}
        move_models(session, job, ModelStatus.VERIFYING, actor=ACTOR, detail=detail)
        release_lease(job, token)
        enqueue_stage(session, job)
