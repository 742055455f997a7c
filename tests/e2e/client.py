"""What the end-to-end tests and the pipeline benchmark do as a client would: register the digits workload
through the API, have the workers train a model on it, register models on that artifact, and wait for jobs
and requests to end."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from tests.e2e.stack import wait_for

# Gate settings that keep verification quick on two cores: two subject-half references, two seed replicas
# (with the served version the three models a utility spread needs), fewer bootstrap draws.
FAST_GATE = {"lira_references": 2, "seed_replicas": 2, "n_boot": 200}
DIGITS_POLICY: dict[str, Any] = {"probes": {"workload": "digits", "size": "small"}, "gate": FAST_GATE}
JOB_TIMEOUT = 240


def ok(response: httpx.Response, status: int | tuple[int, ...] = (200, 201, 202)) -> Any:
    expected = (status,) if isinstance(status, int) else status
    assert response.status_code in expected, (
        f"{response.request.method} {response.request.url}: {response.text}"
    )
    return response.json()


def wait_job(http: httpx.Client, job_id: str, statuses: tuple[str, ...] = ("succeeded",)) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = ok(http.get(f"/v1/jobs/{job_id}"))
        if job["status"] in ("succeeded", "failed", "canceled"):
            assert job["status"] in statuses, f"job ended {job['status']}: {job.get('error')}"
            return job
        return None

    return wait_for(f"job {job_id}", done, JOB_TIMEOUT, 0.5)


def wait_request(
    http: httpx.Client, request_id: str, statuses: tuple[str, ...] = ("completed",)
) -> dict[str, Any]:
    def closed() -> dict[str, Any] | None:
        request = ok(http.get(f"/v1/deletion-requests/{request_id}"))
        if request["status"] in ("completed", "failed", "canceled", "no_data"):
            assert request["status"] in statuses, f"request ended {request['status']}: {request}"
            return request
        return None

    return wait_for(f"deletion request {request_id}", closed, JOB_TIMEOUT, 0.5)


@dataclass
class DigitsSource:
    """The digits workload registered through the API and a version trained on it by the workers."""

    workload: Any
    dataset: str
    train_ids: list[str]
    artifact_uri: str


def upload_digits(http: httpx.Client, samples: Sequence[Any]) -> None:
    """Digits samples as the caller's tenant's dataset `digits`."""
    ok(http.post("/v1/datasets", json={"name": "digits", "kind": "classification"}))
    rows = [
        {
            "external_id": s.sample_id,
            "subject_id": s.subject,
            "features": s.features.tolist(),
            "label": s.label,
        }
        for s in samples
    ]
    ok(http.post("/v1/datasets/digits/samples", json=rows))


def register_digits(http: httpx.Client, model: str = "digits-source") -> DigitsSource:
    """The digits workload (small) as a dataset of the caller's tenant, and `model` trained on its training
    samples by the workers (with provenance)."""
    from workers.workloads import load_workload

    workload = load_workload("digits", "small")
    upload_digits(http, [*workload.train, *workload.heldout])
    ok(http.post("/v1/models", json={"name": model, "task": "image-classification"}))
    train_ids = [s.sample_id for s in workload.train]
    job = ok(
        http.post(
            f"/v1/models/{model}/versions:train",
            json={
                "training_set": {"dataset": "digits", "external_ids": train_ids},
                "params": {"workload": "digits", "size": "small"},
            },
        )
    )
    wait_job(http, job["id"])
    version = ok(http.get(f"/v1/models/{model}/versions/1"))
    assert version["status"] == "registered" and version["artifact_uri"].startswith("artifact://")
    return DigitsSource(workload, "digits", train_ids, version["artifact_uri"])


def new_model(http: httpx.Client, source: DigitsSource, policy: dict[str, Any] | None = None) -> str:
    """A model of its own whose version 1 (served by alias production) is the source's trained artifact."""
    name = f"digits-{uuid.uuid4().hex[:8]}"
    ok(
        http.post(
            "/v1/models",
            json={"name": name, "task": "image-classification", "policy": policy or DIGITS_POLICY},
        )
    )
    ok(
        http.post(
            f"/v1/models/{name}/versions",
            json={
                "artifact_uri": source.artifact_uri,
                "training_set": {"dataset": source.dataset, "external_ids": source.train_ids},
            },
        )
    )
    ok(http.put(f"/v1/models/{name}/aliases/production", json={"version": 1, "expected_version": None}))
    return name
