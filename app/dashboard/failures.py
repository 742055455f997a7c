"""A failed request in plain words: what stopped it, what that means for the data subject, what to do.

The pipeline records failures as technical text (the method that ran, the exception it raised); a
compliance officer needs the cause, the consequence and the next step. The technical text stays
available behind a toggle, with server paths shortened to the file's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from app.dashboard.text import plain_value, redact
from app.jobs.models import JobKind, JobStatus
from app.jobs.schemas import JobOut, MethodAttempt
from app.requests.models import ModelStatus, RequestStatus
from app.requests.schemas import DeletionRequestOut

# Outcomes of a method attempt, as workers.pipeline.escalation records them.
REJECTED = "rejected"
ERROR = "error"
UNAVAILABLE = "unavailable"
STORE_TROUBLE = re.compile(
    r"VersionNotFound|FileNotFoundError|No such file|ArtifactCorrupted|artifact|checksum", re.IGNORECASE
)
WORKER_LOST = re.compile(r"worker (was )?lost", re.IGNORECASE)
NO_SERVING_VERSION = re.compile(r"no version that may serve", re.IGNORECASE)


class Cause(StrEnum):
    REFUSED = "refused"
    STORE = "store"
    CRASHED = "crashed"
    UNAVAILABLE = "unavailable"
    WORKER_LOST = "worker_lost"
    NO_VERSION = "no_version"
    UNKNOWN = "unknown"


# What each cause means, and what to do about it.
CAUSE_TEXT: dict[Cause, tuple[str, str]] = {
    Cause.REFUSED: (
        "the verification gate refused the new version: it still showed traces of the subject's data",
        "A retry runs the same methods again. Change what made the gate refuse first (for example let "
        "the model's unlearning chain end with an exact retrain), then retry.",
    ),
    Cause.STORE: (
        "the model's files could not be read from the artifact store",
        "Check that the artifact store is reachable and complete, then retry.",
    ),
    Cause.CRASHED: (
        "the unlearning method stopped with an internal error",
        "The technical detail below names the error; once it is fixed, retry.",
    ),
    Cause.UNAVAILABLE: (
        "the method cannot run on this model version (it lacks what the method needs, such as "
        "training checkpoints)",
        "Allow another method for this model (for example an exact retrain), then retry.",
    ),
    Cause.WORKER_LOST: (
        "the worker running the job stopped before it finished, too many times (for example out of "
        "memory, or a restarted machine)",
        "Check the workers' health and resources, then retry.",
    ),
    Cause.NO_VERSION: (
        "the model has no version that may serve, so there was nothing to unlearn from",
        "Register or verify a version of the model, then retry.",
    ),
    Cause.UNKNOWN: (
        "the unlearning job stopped without producing a new version",
        "The technical detail below says more; once the cause is dealt with, retry.",
    ),
}


@dataclass
class MethodFailure:
    method: str
    cause: str


@dataclass
class FailureView:
    """What the request page shows of a failure."""

    cause: str  # one sentence
    next_step: str
    still_serving: list[str]  # "bios-lm v1": versions that still hold the subject's data
    methods: list[MethodFailure] = field(default_factory=list)  # when methods failed for different causes
    technical: list[str] = field(default_factory=list)  # redacted technical text, for the toggle


def attempt_cause(attempt: MethodAttempt) -> Cause | None:
    """The cause of one method attempt's failure; None for an attempt that did not fail."""
    reason = str((attempt.details or {}).get("reason") or "")
    if attempt.outcome == REJECTED:
        return Cause.REFUSED
    if attempt.outcome == UNAVAILABLE:
        return Cause.UNAVAILABLE
    if attempt.outcome == ERROR:
        return Cause.STORE if STORE_TROUBLE.search(reason) else Cause.CRASHED
    return None


def job_cause(job: JobOut) -> tuple[Cause, list[MethodFailure]]:
    """The cause of a failed job: its own error when it never reached a method (worker lost, no version),
    else what its method attempts ran into."""
    error = job.error or ""
    if WORKER_LOST.search(error):
        return Cause.WORKER_LOST, []
    if NO_SERVING_VERSION.search(error):
        return Cause.NO_VERSION, []
    failed = [(a.method, attempt_cause(a)) for a in job.method_attempts]
    causes = [cause for _, cause in failed if cause is not None]
    if not causes:
        return Cause.UNKNOWN, []
    last = causes[-1]
    methods = [MethodFailure(method, CAUSE_TEXT[cause][0]) for method, cause in failed if cause is not None]
    return last, methods if len(set(causes)) > 1 else []


def explain(request: DeletionRequestOut, jobs: Sequence[JobOut]) -> FailureView | None:
    """The failure of a failed request, in plain words (None for a request that has not failed)."""
    if request.status != RequestStatus.FAILED:
        return None
    # the latest failure is the one to act on (a request retried before may have failed more than once)
    failed_jobs = sorted(
        (job for job in jobs if job.status == JobStatus.FAILED and job.kind == JobKind.UNLEARN),
        key=lambda job: job.finished_at or job.created_at,
    )
    cause, methods = job_cause(failed_jobs[-1]) if failed_jobs else (Cause.UNKNOWN, [])
    text, next_step = CAUSE_TEXT[cause]
    tried = list(dict.fromkeys(a.method for a in failed_jobs[-1].method_attempts)) if failed_jobs else []
    if methods:
        sentence = f"The deletion stopped: none of the methods it tried ({_listed(tried)}) succeeded."
    elif tried:
        sentence = f"The deletion stopped after trying {_listed(tried)}: {text}."
    else:
        sentence = f"The deletion stopped: {text}."
    technical = [redact(request.failure_reason)] if request.failure_reason else []
    for job in failed_jobs[-1:]:
        for attempt in job.method_attempts:
            reason = (attempt.details or {}).get("reason")
            if reason:
                technical.append(redact(f"{attempt.method} (attempt {attempt.attempt}): {reason}"))
    still_serving = [
        f"{m.model} v{m.from_version}" if m.from_version else m.model
        for m in request.models
        if m.status == ModelStatus.FAILED
    ]
    return FailureView(sentence, next_step, still_serving, methods, list(dict.fromkeys(technical)))


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


@dataclass(frozen=True)
class TimelineDetail:
    facts: str  # short facts shown in line ("job_id: …; method: …")
    reason: str | None  # the technical reason, shown behind a toggle


def timeline_detail(detail: Mapping[str, Any]) -> TimelineDetail:
    """A timeline entry's detail for the main view: its facts in line, its reason (often an exception's
    text) apart, both without server paths."""
    facts = "; ".join(f"{name}: {plain_value(value)}" for name, value in detail.items() if name != "reason")
    reason = detail.get("reason")
    return TimelineDetail(facts, redact(str(reason)) if reason else None)
