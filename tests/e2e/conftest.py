"""The end-to-end stack: real Postgres (the suite's scratch database), a Redis server of the tests' own on a
free port (a test stops it: the machine's Redis is never touched), the API under uvicorn, and two Celery
workers deployed as in production: one on the `gpu` queue, one on `default`.

Settings are shortened for the tests (batching window, lease, sweep interval, no purge grace). The digits
workload (small) is registered through the API once per session and a model trained on it through
POST /v1/models/{model}/versions:train; each test then registers a model of its own on that artifact
(instantly), so tests do not see each other's deletions.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.db import session_scope
from app.security.keys import create_api_key
from app.security.scopes import ALL_SCOPES
from app.tenancy.service import create_tenant
from tests.e2e.client import DigitsSource, register_digits
from tests.e2e.stack import Api, RedisServer, Worker, free_port

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
        "LETHE_MODELS_ROOT": str(e2e_dir / "models"),
        # API and workers sign deletion certificates with one key, audit checkpoints with another
        "LETHE_CERTIFICATE_SIGNING_KEY": base64.b64encode(os.urandom(32)).decode(),
        "LETHE_AUDIT_SIGNING_KEY": base64.b64encode(os.urandom(32)).decode(),
        "LETHE_AUDIT_CHECKPOINT_DIR": str(e2e_dir / "audit-checkpoints"),
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


def new_tenant_auth() -> dict[str, str]:
    """A tenant of its own with an API key of every scope."""
    with session_scope() as session:
        tenant = create_tenant(session, f"e2e-{uuid.uuid4().hex[:8]}")
        _, key = create_api_key(session, tenant.id, ALL_SCOPES, name="e2e")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def tenant_auth(database_url: str) -> dict[str, str]:
    return new_tenant_auth()


@pytest.fixture(scope="session")
def http(api: Api, workers: Workers, tenant_auth: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, headers=tenant_auth, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def digits_source(http: httpx.Client) -> DigitsSource:
    return register_digits(http)
