"""Deletion requests at every stage, written the way the pipeline writes them (same domain functions),
so the dashboard and the certificates can be exercised without running a model."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.certificates.service import issue_certificate
from app.db import session_scope, utcnow
from app.jobs.models import Job, JobAttempt, JobRequest
from app.registry.models import Model, ModelVersion, VersionStatus
from app.registry.service import create_derived_version, set_alias
from app.requests.lifecycle import change_status
from app.requests.models import DeletionRequest, DeletionRequestModel, DeletionRequestSample
from tests.api.seeding import Seeded, seed, unique_subject

ACTOR = "worker:gpu-1"
ALIAS = "prod"
PLOTS = ("roc", "loss_hist", "canary_ranks")


def png_bytes(width: int = 120, height: int = 80, shade: int = 90) -> bytes:
    """A small valid grey PNG (the dashboard only has to serve and show it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([shade]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def sample_report(verdict: str = "pass") -> dict[str, Any]:
    """A verification report in the shape workers.verification.report writes."""
    return {
        "method": "nabla_tau",
        "exact": False,
        "verdict": verdict,
        "passed": verdict == "pass",
        "label": None,
        "reasons": ["mia_forget_auc passed with power (served fails it): difference +0.012"],
        "rules": [
            {
                "rule": "mia_forget_auc",
                "kind": "forgetting",
                "status": verdict,
                "served_status": "fail",
                "detail": "candidate minus reference AUC +0.012 [-0.04, 0.06]; fails above 0.03",
                "powered": True,
            },
            {
                "rule": "utility_accuracy_test",
                "kind": "utility",
                "status": "pass",
                "served_status": "pass",
                "detail": "accuracy ratio to reference 0.995",
                "powered": False,
            },
        ],
        "samples": {"forget": 3, "retain": 200, "heldout": 200},
        "checks": {
            "mia": {
                "metrics": {
                    "lira.forget_auc.candidate": {"value": 0.512, "ci95": [0.41, 0.61], "n": 203},
                    "lira.forget_auc.candidate-reference": {"value": 0.012, "ci95": [-0.04, 0.06], "n": 203},
                    "lira.forget_auc.served": {"value": 0.81, "ci95": [0.74, 0.88], "n": 203},
                },
                "values": {},
                "not_checked": [],
                "seconds": 1.5,
            },
            "utility": {
                "metrics": {
                    "utility.accuracy_test.candidate-reference": {
                        "value": 0.995,
                        "ci95": [0.98, 1.01],
                        "n": 200,
                    }
                },
                "values": {},
                "not_checked": [],
                "seconds": 0.4,
            },
        },
        "not_checked": ["relearning probe (disabled by policy)"],
        "timings": {"total_seconds": 2.0},
        "plots": [f"{name}.png" for name in PLOTS],
    }


@dataclass
class Scenario:
    tenant_id: str
    subject: str
    seeded: Seeded
    request_id: str
    model_name: str
    job_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def new_request(client: TestClient, tenant_id: str, auth: dict[str, str], samples: int = 3) -> Scenario:
    """A subject with samples, a model trained on them, and a deletion request for the subject (resolved)."""
    subject = unique_subject()
    seeded = seed(tenant_id, {subject: samples})
    with session_scope() as session:  # the registrant put version 1 in service
        version = session.get(ModelVersion, seeded.versions["m1"])
        assert version is not None
        model = session.get(Model, version.model_id)
        assert model is not None
        set_alias(session, model, ALIAS, version, None, "initial release", "key:registrant")
    answer = client.post("/v1/deletion-requests", json={"subject_id": subject}, headers=auth)
    assert answer.status_code == 202, answer.text
    return Scenario(tenant_id, subject, seeded, answer.json()["id"], seeded.models["m1"])


def _request(session: Any, request_id: str) -> DeletionRequest:
    return session.scalars(
        select(DeletionRequest).where(DeletionRequest.id == request_id).with_for_update()
    ).one()


def start_job(scenario: Scenario, stage: str = "unlearning", progress: int = 5) -> str:
    """The planner's and the worker's first steps: a running unlearning job on the model."""
    now = utcnow()
    with session_scope() as session:
        row = session.scalars(
            select(DeletionRequestModel).where(DeletionRequestModel.request_id == scenario.request_id)
        ).one()
        job = Job(
            tenant_id=scenario.tenant_id,
            model_id=row.model_id,
            kind="unlearn",
            stage=stage,
            status="running",
            progress=progress,
            method="nabla_tau",
            attempts=1,
            created_at=now,
            started_at=now,
        )
        session.add(job)
        session.flush()
        session.add(JobRequest(job_id=job.id, request_id=scenario.request_id))
        session.add(JobAttempt(job_id=job.id, method="nabla_tau", attempt=1, started_at=now))
        row.job_id, row.status, row.from_version_id = job.id, "unlearning", scenario.seeded.versions["m1"]
        request = _request(session, scenario.request_id)
        for status in ("queued", "unlearning"):
            change_status(session, request, status, actor=ACTOR)
        scenario.job_id = job.id
    return job.id


def set_progress(job_id: str, progress: int, stage: str | None = None) -> None:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.progress, job.heartbeat_at = progress, utcnow()
        if stage is not None:
            job.stage = stage


def grey_plots(directory: Path) -> None:
    for index, name in enumerate(PLOTS):
        (directory / f"{name}.png").write_bytes(png_bytes(shade=60 + 50 * index))


def write_report(
    scenario: Scenario,
    directory: Path,
    verdict: str = "pass",
    draw: Callable[[Path], list[dict[str, Any]] | None] = grey_plots,
    summary: str | None = None,
) -> None:
    """The verifier's output: report.json and its plots, recorded on the job and its attempt. `draw`
    writes the plots; when it answers the report's figures (workers.verification.plots.Figure.to_dict),
    the report lists those, as the verifier's does. `summary`: the gate's one plain sentence."""
    directory.mkdir(parents=True, exist_ok=True)
    report = sample_report(verdict)
    if summary is not None:
        report["summary"] = summary
    figures = draw(directory)
    if figures is not None:
        report["figures"] = figures
        report["plots"] = [figure["file"] for figure in figures if figure["file"]]
    (directory / "report.json").write_text(json.dumps(report))
    with session_scope() as session:
        job = session.get(Job, scenario.job_id)
        assert job is not None
        job.report_dir, job.stage, job.progress = str(directory), "verifying", 90
        attempt = session.scalars(select(JobAttempt).where(JobAttempt.job_id == job.id)).one()
        attempt.verdict, attempt.outcome, attempt.finished_at = verdict, "promoted", utcnow()
        change_status(session, _request(session, scenario.request_id), "verifying", actor=ACTOR)


def complete(scenario: Scenario, completed_at: datetime | None = None) -> None:
    """Promotion and completion: the candidate without the subject's samples serves, the request is
    completed and its certificate issued, in one transaction as the pipeline does."""
    with session_scope() as session:
        parent = session.get(ModelVersion, scenario.seeded.versions["m1"])
        assert parent is not None
        removed = list(
            session.scalars(
                select(DeletionRequestSample.sample_id).where(
                    DeletionRequestSample.request_id == scenario.request_id
                )
            )
        )
        child = create_derived_version(
            session, parent, removed, ACTOR, status=VersionStatus.VERIFIED, method="nabla_tau"
        )
        model = session.get(Model, parent.model_id)
        assert model is not None
        set_alias(
            session, model, ALIAS, child, parent.version, f"deletion request {scenario.request_id}", ACTOR
        )
        row = session.scalars(
            select(DeletionRequestModel).where(DeletionRequestModel.request_id == scenario.request_id)
        ).one()
        row.to_version_id, row.status = child.id, "completed"
        if scenario.job_id:
            job = session.get(Job, scenario.job_id)
            assert job is not None
            job.status, job.stage, job.progress, job.finished_at = "succeeded", "done", 100, utcnow()
            job.candidate_version_id = child.id
        request = _request(session, scenario.request_id)
        change_status(session, request, "completed", actor=ACTOR)
        if completed_at is not None:
            request.completed_at = completed_at
        issue_certificate(session, request)


# What a worker records when a method cannot read the served model: an exception with a server path.
STORE_FAILURE = (
    "FileNotFoundError: [Errno 2] No such file or directory: "
    "'/srv/lethe/artifacts/versions/4be1c0de/files/model.safetensors'"
)


def fail(scenario: Scenario, reason: str = STORE_FAILURE, method: str = "nabla_tau") -> None:
    """The escalation chain spent: the running job's attempt ends in an error and the pipeline fails the
    job (workers.pipeline.jobs.fail_job: model rows and request failed, old version serving on)."""
    from workers.pipeline.escalation import ERROR, finish_attempt
    from workers.pipeline.jobs import fail_job

    with session_scope() as session:
        job = session.get(Job, scenario.job_id)
        assert job is not None
        attempt = session.scalars(select(JobAttempt).where(JobAttempt.job_id == job.id)).one()
        finish_attempt(session, job, attempt, ERROR, None, {"reason": f"{reason}"})
        fail_job(session, job, f"every method of the chain failed ({method}); last: {method}: {reason}")
