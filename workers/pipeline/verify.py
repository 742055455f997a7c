"""The verification stage: run the checks and the gate on the candidate, write the report with the job.

The report goes to `settings.report_root/<job id>/attempt-<n>` (the job row points at the latest, which
GET /v1/jobs/{id}/report serves). Pass: the candidate becomes `verified` and the job moves to promotion.
Fail or inconclusive: the candidate is `rejected` and tainted (an approximate candidate that did not pass
may still hold the forgotten samples, so its artifact is purged like its parent's), and the next method
of the chain runs.

Model policy keys read here (app/registry/policy.py): gate (overrides of GatePolicy), probes ({workload,
size, seed}: the planted signal of a reference workload whose samples the model was trained on, which
gives the gate power where membership inference has none).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from app.db import get_session_factory
from app.jobs.models import Job, JobAttempt, JobKind, Stage
from app.jobs.params import UnlearnParams
from app.jobs.service import report_url
from app.registry.models import Model, ModelVersion, VersionStatus
from app.registry.policy import GatePolicy, model_policy
from app.registry.service import set_version_status, taint_version
from app.security.subjects import subject_hmac
from app.settings import get_settings
from workers.pipeline import data, store
from workers.pipeline.escalation import ERROR, PASSED, REJECTED, current_attempt, escalate, finish_attempt
from workers.pipeline.jobs import claimed_job, enqueue_stage, held_job, job_requests, job_sample_ids
from workers.pipeline.leases import Heartbeat, LeaseLost, release_lease
from workers.pipeline.stages import ACTOR

log = logging.getLogger("lethe.pipeline")

VERIFY_PROGRESS = (60, 95)


def run_verify(job_id: str) -> None:
    with claimed_job(job_id, JobKind.UNLEARN, {Stage.VERIFYING}) as claim:
        if claim is None:
            return
        attempt = current_attempt(claim.session, claim.job)
        assert attempt is not None, f"job {job_id} verifies without an attempt"
        attempt_id, token = attempt.id, claim.token
    try:
        _verify(job_id, token, attempt_id)
    except LeaseLost:
        log.warning("job %s: lost its lease during verification; the new holder carries on", job_id)


def gate_policy(model: Model) -> GatePolicy:
    return model_policy(model.policy).gate_policy()


def planted_probes(model: Model, forget: list[Any]) -> Any:
    """The planted signal of the reference workload named by the model's policy, keyed like the service's
    samples (subjects as HMACs); None without such a policy."""
    spec = model_policy(model.policy).probes
    if spec is None:
        return None
    from workers.verification.probes import probes_for_workload
    from workers.workloads import load_workload

    workload = load_workload(spec.workload, spec.size, spec.seed)
    names = {subject_hmac(name): name for name in [*workload.subjects, *workload.heldout_subjects]}
    forget_names = {names[s.subject] for s in forget if s.subject in names}
    planted = set(workload.reference_backdoors) | set(workload.reference_phrases)
    clean = [s for s in workload.heldout if s.subject not in planted and "backdoor" not in s.meta]
    probes = probes_for_workload(workload, forget_names, clean)
    probes.canaries = [dataclasses.replace(c, subject=subject_hmac(c.subject)) for c in probes.canaries]
    if probes.backdoor is not None:  # trigger owners keyed like the gate's references know the subjects
        owners = [subject_hmac(owner) for owner in probes.backdoor.owners]
        probes.backdoor = dataclasses.replace(probes.backdoor, owners=owners)
    return probes


def _report_directory(job: Job, attempt: JobAttempt) -> tuple[Path, str]:
    relative = f"{job.id}/attempt-{attempt.attempt}"
    return Path(get_settings().report_root) / relative, relative


def judge(
    served: Any,
    result: Any,
    sets: data.DataSets,
    lineage: tuple[ModelVersion, Any] | None,
    own: Any | None,
    cache: Path,
    policy: GatePolicy,
    probes: Any,
    out_dir: Path,
    progress: Any,
) -> Any:
    """The gate on `result` (made from `served` by deleting `sets.forget`), its report written to `out_dir`.

    The gate's references (subject-half models and seed replicas) are trained once per lineage and cached
    in `cache`; exact candidates need them too: their utility is held against the seed replicas' spread (a
    fixed ratio to the served version refuses exact retrains of another seed)."""
    from workers.verification.references import trainer_from_record
    from workers.verification.report import verify

    trainer = trainer_from_record(lineage[1]) if lineage is not None else None
    return verify(
        served,
        result,
        result.adapter if result.exact else None,
        sets.forget,
        sets.retain,
        sets.heldout,
        probes,
        policy,
        cache if trainer is not None else None,
        out_dir,
        training=own if trainer is not None else None,  # keys the served version's cached signals
        reference_trainer=trainer,
        progress=progress,
    )


def _verify(job_id: str, token: str, attempt_id: int) -> None:
    from workers.unlearning.base import UnlearningResult

    with get_session_factory()() as session:
        job = session.get(Job, job_id)
        attempt = session.get(JobAttempt, attempt_id)
        assert job is not None and attempt is not None
        base = session.get(ModelVersion, UnlearnParams.of(job).base_version_id)
        candidate = session.get(ModelVersion, job.candidate_version_id)
        model = session.get(Model, job.model_id)
        assert base is not None and candidate is not None and model is not None
        sets = data.build_sets(session, base, job_sample_ids(session, job))
        lineage = store.lineage_record(session, base)
        own = store.own_record(base)
        out_dir, relative = _report_directory(job, attempt)
        details = dict(attempt.details or {})
    started = time.perf_counter()
    with Heartbeat(job_id, token) as heartbeat:
        low, high = VERIFY_PROGRESS
        heartbeat.progress(low, force=True)
        try:
            policy = gate_policy(model)
            probes = planted_probes(model, sets.forget)
            served = store.load_adapter_of(base)
            adapter = store.load_adapter_of(candidate)
            result = UnlearningResult(
                adapter=adapter,
                method=candidate.method or "",
                exact=candidate.exact,
                seconds=float(details.get("unlearning_seconds") or 0.0),
                steps=list(details.get("steps") or []),
                details=dict(details.get("method_details") or {}),
            )
            report = judge(
                served,
                result,
                sets,
                lineage,
                own,
                store.verification_cache(base),
                policy,
                probes,
                out_dir,
                lambda fraction, _m: heartbeat.progress(low + (high - low) * fraction),
            )
        except LeaseLost:
            raise
        except Exception as exc:  # verification that cannot run rejects the candidate, it never passes it
            log.exception("job %s: verification failed to run", job_id)
            _record_verdict(job_id, token, attempt_id, None, relative, f"{type(exc).__name__}: {exc}", 0.0)
            return
    _record_verdict(job_id, token, attempt_id, report, relative, None, time.perf_counter() - started)


def _summary(job: Job, attempt: JobAttempt, report: Any | None, error: str | None) -> dict[str, Any]:
    if report is None:
        return {"verdict": None, "error": error, "job_id": job.id, "attempt": attempt.attempt}
    return {
        "verdict": report.verdict.verdict,
        "label": report.verdict.label,
        "reasons": report.verdict.reasons[:5],
        "exact": report.exact,
        "job_id": job.id,
        "attempt": attempt.attempt,
        "report_url": report_url(job.id),
    }


def _record_verdict(
    job_id: str,
    token: str,
    attempt_id: int,
    report: Any | None,
    relative_dir: str,
    error: str | None,
    seconds: float,
) -> None:
    with held_job(job_id, token) as (session, job):
        job_requests(session, job, lock=True)  # lock order: job, requests, then the audit head
        attempt = session.get(JobAttempt, attempt_id)
        candidate = session.get(ModelVersion, job.candidate_version_id)
        assert attempt is not None and candidate is not None
        summary = _summary(job, attempt, report, error)
        if report is not None:
            job.report_dir = relative_dir
        extra = {
            "report_dir": relative_dir if report is not None else None,
            "verification_seconds": round(seconds, 3),
        }
        if report is not None and report.passed:
            finish_attempt(session, job, attempt, PASSED, report.verdict.verdict, extra)
            set_version_status(session, candidate, VersionStatus.VERIFIED, ACTOR, verification=summary)
            job.stage = Stage.PROMOTING
            job.progress = VERIFY_PROGRESS[1]
            release_lease(job, token)
            enqueue_stage(session, job)
            return
        verdict = report.verdict.verdict if report is not None else None
        reason = error or "; ".join(report.verdict.reasons[:2])
        outcome = REJECTED if verdict else ERROR
        finish_attempt(session, job, attempt, outcome, verdict, {**extra, "reason": reason[:2000]})
        set_version_status(session, candidate, VersionStatus.REJECTED, ACTOR, verification=summary)
        taint_version(
            session, candidate, "rejected by the gate: it may still hold the forgotten samples", ACTOR
        )
        escalate(session, job, token, f"{attempt.method}: {verdict or 'verification error'}: {reason[:300]}")
