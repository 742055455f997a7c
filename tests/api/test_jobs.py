"""GET /v1/jobs/{id}, its report and the report's plots."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.jobs.models import Job, JobAttempt, JobRequest
from app.registry.models import Model
from tests.api.seeding import seed, unique_subject

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
REPORT = {"verdict": "pass", "method": "retrain", "plots": ["roc.png", "loss_hist.png"], "checks": {}}


def _job(tenant_id: str, client, auth, report_dir: Path | None, kind: str = "unlearn") -> tuple[str, str]:
    """A job as the pipeline leaves it mid-way, linked to one deletion request."""
    subject = unique_subject()
    seeded = seed(tenant_id, {subject: 1})
    request_id = client.post("/v1/deletion-requests", json={"subject_id": subject}, headers=auth).json()["id"]
    created = datetime.now(UTC) - timedelta(seconds=30)
    with session_scope() as session:
        model_id = session.scalar(select(Model.id).where(Model.name == seeded.models["m1"]))
        job = Job(
            tenant_id=tenant_id,
            model_id=model_id,
            kind=kind,
            stage="verifying",
            status="running",
            progress=70,
            method="nabla_tau",
            attempts=1,
            created_at=created,
            started_at=created + timedelta(seconds=5),
            report_dir=str(report_dir) if report_dir else None,
        )
        session.add(job)
        session.flush()
        session.add(JobRequest(job_id=job.id, request_id=request_id))
        session.add(
            JobAttempt(
                job_id=job.id,
                method="first_epoch_ascent",
                attempt=1,
                started_at=created,
                finished_at=created + timedelta(seconds=2),
                verdict="fail",
                outcome="escalated",
            )
        )
        session.add(
            JobAttempt(
                job_id=job.id, method="nabla_tau", attempt=2, started_at=created + timedelta(seconds=3)
            )
        )
        return job.id, request_id


def _write_report(directory: Path, plots: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(REPORT))
    for name, content in plots.items():
        (directory / name).write_bytes(content)


def test_job_shows_stage_progress_attempts_and_timings(client, tenant_a, auth_a, tmp_path) -> None:
    job_id, request_id = _job(tenant_a, client, auth_a, tmp_path / "r")

    answer = client.get(f"/v1/jobs/{job_id}", headers=auth_a)

    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert (job["kind"], job["status"], job["stage"], job["progress"], job["method"]) == (
        "unlearn",
        "running",
        "verifying",
        70,
        "nabla_tau",
    )
    assert job["request_ids"] == [request_id] and job["attempts"] == 1
    assert job["queued_seconds"] == pytest.approx(5, abs=0.01)
    assert job["running_seconds"] >= 25 and job["finished_at"] is None
    assert [(a["method"], a["verdict"]) for a in job["method_attempts"]] == [
        ("first_epoch_ascent", "fail"),
        ("nabla_tau", None),
    ]
    assert job["method_attempts"][0]["seconds"] == pytest.approx(2, abs=0.01)
    assert job["report_url"] is None  # nothing written yet
    request = client.get(f"/v1/deletion-requests/{request_id}", headers=auth_a).json()
    assert request["job_ids"] == [job_id]


def test_report_is_404_until_written_then_served(client, tenant_a, auth_a, tmp_path) -> None:
    report_dir = tmp_path / "report"
    job_id, _ = _job(tenant_a, client, auth_a, report_dir)

    missing = client.get(f"/v1/jobs/{job_id}/report", headers=auth_a)
    assert missing.status_code == 404 and missing.headers["content-type"].startswith(
        "application/problem+json"
    )
    assert client.get(f"/v1/jobs/{job_id}/report/roc.png", headers=auth_a).status_code == 404
    report_dir.mkdir()
    (report_dir / "report.json").write_text('{"verdict": "pa')  # caught half written
    assert client.get(f"/v1/jobs/{job_id}/report", headers=auth_a).status_code == 404

    _write_report(report_dir, {"roc.png": PNG, "loss_hist.png": PNG[::-1], "secret.png": b"not listed"})

    report = client.get(f"/v1/jobs/{job_id}/report", headers=auth_a)
    assert report.status_code == 200 and report.json() == REPORT
    plot = client.get(f"/v1/jobs/{job_id}/report/roc.png", headers=auth_a)
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png" and plot.content == PNG
    assert (
        client.get(f"/v1/jobs/{job_id}", headers=auth_a).json()["report_url"] == f"/v1/jobs/{job_id}/report"
    )


@pytest.mark.parametrize(
    "plot", ["secret", "canary_ranks", "ROC", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "roc%00", "report"]
)
def test_only_listed_plots_are_served(client, tenant_a, auth_a, tmp_path, plot) -> None:
    report_dir = tmp_path / "report"
    job_id, _ = _job(tenant_a, client, auth_a, report_dir)
    _write_report(report_dir, {"roc.png": PNG, "secret.png": b"not listed"})
    (tmp_path / "outside.png").write_bytes(b"outside")

    answer = client.get(f"/v1/jobs/{job_id}/report/{plot}.png", headers=auth_a)

    assert answer.status_code == (422 if "%00" in plot else 404)  # a NUL breaks the input rule
    assert b"not listed" not in answer.content and b"outside" not in answer.content


def test_jobs_are_per_tenant_and_scoped(client, tenant_a, auth_a, auth_b, make_key, tmp_path) -> None:
    report_dir = tmp_path / "report"
    job_id, _ = _job(tenant_a, client, auth_a, report_dir)
    train_id, _ = _job(tenant_a, client, auth_a, None, kind="train")
    _write_report(report_dir, {"roc.png": PNG})

    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/report", f"/v1/jobs/{job_id}/report/roc.png"):
        assert client.get(path, headers=auth_b).status_code == 404
    assert client.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=auth_a).status_code == 404

    provenance_only = make_key(tenant_a, ["provenance:read"])
    assert client.get(f"/v1/jobs/{job_id}", headers=provenance_only).status_code == 403
    requests_reader = make_key(tenant_a, ["requests:read"])
    assert client.get(f"/v1/jobs/{job_id}", headers=requests_reader).status_code == 200
    assert client.get(f"/v1/jobs/{train_id}", headers=requests_reader).status_code == 403
    models_reader = make_key(tenant_a, ["models:read"])
    assert client.get(f"/v1/jobs/{train_id}", headers=models_reader).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}").status_code == 401
