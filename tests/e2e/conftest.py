"""The end-to-end stack: real Postgres (the suite's scratch database), a Redis server of the tests' own on a
free port (a test stops it: the machine's Redis is never touched), the API under uvicorn, and two Celery
workers deployed as in production: one on the `gpu` queue, one on `default`.

Settings are shortened for the tests (batching window, lease, sweep interval, no purge grace). The digits
workload (small) is registered through the API once per session and a model trained on it through
POST /v1/models/{model}/versions:train; each test then registers a model of its own on that artifact
(instantly), so tests do not see each other's deletions.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db import session_scope
from app.security.keys import create_api_key
from app.security.scopes import ALL_SCOPES
from app.tenancy.service import create_tenant
from tests.e2e.stack import Api, RedisServer, Worker, free_port, wait_for

STACK_SETTINGS = {
    "LETHE_BATCHING_WINDOW_SECONDS": "1",
    "LETHE_JOB_LEASE_SECONDS": "6",
    "LETHE_JOB_HEARTBEAT_SECONDS": "1",
    "LETHE_SWEEP_INTERVAL_SECONDS": "1",
    "LETHE_PURGE_GRACE_SECONDS": "0",
    "LETHE_OUTBOX_POLL_SECONDS": "0.5",
    "LETHE_OUTBOX_DISPATCH_IN_API": "true",
    "LETHE_WEBHOOK_BACKOFF_SECONDS": "0.5",
    "LETHE_ALLOW_PRIVATE_CALLBACKS": "true",
    "LETHE_LOG_JSON": "false",
    "LETHE_RATE_LIMIT_PER_MINUTE": "0",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
# Gate settings that keep verification quick on two cores: two LiRA references, fewer bootstrap draws.
FAST_GATE = {"lira_references": 2, "n_boot": 200}
DIGITS_POLICY: dict[str, Any] = {"probes": {"workload": "digits", "size": "small"}, "gate": FAST_GATE}
JOB_TIMEOUT = 240


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def redis_server(e2e_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), e2e_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack_env(database_url: str, redis_server: RedisServer, e2e_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        **STACK_SETTINGS,
        "LETHE_DATABASE_URL": database_url,
        "LETHE_BROKER_URL": redis_server.url,
        "LETHE_ARTIFACT_ROOT": str(e2e_dir / "artifacts"),
        "LETHE_REPORT_ROOT": str(e2e_dir / "reports"),
    }


@pytest.fixture(scope="session")
def api(stack_env: dict[str, str], e2e_dir: Path) -> Iterator[Api]:
    server = Api(stack_env, e2e_dir)
    server.start()
    yield server
    server.stop()


@dataclass
class Workers:
    gpu: Worker
    default: Worker


@pytest.fixture(scope="session")
def workers(stack_env: dict[str, str], e2e_dir: Path) -> Iterator[Workers]:
    pair = Workers(
        Worker("gpu", "gpu", stack_env, e2e_dir),
        # planning and webhooks must not wait behind a purge: two processes, as a default worker would have
        Worker("default", "default", stack_env, e2e_dir, concurrency=2),
    )
    pair.default.start()
    pair.gpu.start()
    yield pair
    pair.gpu.stop()
    pair.default.stop()


@pytest.fixture
def gpu_worker(workers: Workers) -> Iterator[Worker]:
    """The GPU worker, running at the start and restarted after the test if the test stopped it."""
    if not workers.gpu.running:
        workers.gpu.start()
    yield workers.gpu
    if not workers.gpu.running:
        workers.gpu.start()


@pytest.fixture(scope="session")
def tenant_auth(database_url: str) -> dict[str, str]:
    with session_scope() as session:
        tenant = create_tenant(session, f"e2e-{uuid.uuid4().hex[:8]}")
        _, key = create_api_key(session, tenant.id, ALL_SCOPES, name="e2e")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def http(api: Api, workers: Workers, tenant_auth: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, headers=tenant_auth, timeout=30) as client:
        yield client


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


@pytest.fixture(scope="session")
def digits_source(http: httpx.Client) -> DigitsSource:
    from workers.workloads import load_workload

    workload = load_workload("digits", "small")
    ok(http.post("/v1/datasets", json={"name": "digits", "kind": "classification"}))
    rows = [
        {
            "external_id": s.sample_id,
            "subject_id": s.subject,
            "features": s.features.tolist(),
            "label": s.label,
        }
        for s in [*workload.train, *workload.heldout]
    ]
    ok(http.post("/v1/datasets/digits/samples", json=rows))
    ok(http.post("/v1/models", json={"name": "digits-source", "task": "image-classification"}))
    train_ids = [s.sample_id for s in workload.train]
    job = ok(
        http.post(
            "/v1/models/digits-source/versions:train",
            json={
                "training_set": {"dataset": "digits", "external_ids": train_ids},
                "params": {"workload": "digits", "size": "small"},
            },
        )
    )
    wait_job(http, job["id"])
    version = ok(http.get("/v1/models/digits-source/versions/1"))
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
