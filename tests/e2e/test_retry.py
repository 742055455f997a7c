"""A request that failed for a passing reason completes once retried: real API, Redis and worker processes.

The failure is one an operator meets: the served model's files are missing from the artifact store (an
unmounted volume, say), so every method of the chain fails to load it. Once the files are back, POST
/v1/deletion-requests/{id}:retry sends the request through the outbox to a new job, which unlearns,
verifies and promotes as any other, under the deadline the request had from the start.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.dashboard.failures import explain
from app.jobs.schemas import JobOut
from app.requests.schemas import DeletionRequestOut
from tests.e2e.client import DigitsSource, new_model, ok, wait_request

pytestmark = pytest.mark.e2e


class ArtifactFiles:
    """A stored version's files, which a test can move out of the artifact store and back."""

    def __init__(self, store_root: Path, artifact_uri: str) -> None:
        self.stored = store_root / "versions" / artifact_uri.removeprefix("artifact://")
        self.away = self.stored.with_name(f"{self.stored.name}.away")

    def remove(self) -> None:
        self.stored.rename(self.away)

    def restore(self) -> None:
        if self.away.exists():
            self.away.rename(self.stored)


@pytest.fixture
def source_files(digits_source: DigitsSource, e2e_dir: Path) -> Iterator[ArtifactFiles]:
    """The files of the version every test's model serves; back in the store after the test in any case."""
    files = ArtifactFiles(e2e_dir / "artifacts", digits_source.artifact_uri)
    assert files.stored.is_dir()
    try:
        yield files
    finally:
        files.restore()


def test_a_retried_request_completes_under_its_first_deadline(
    http: httpx.Client, digits_source: DigitsSource, source_files: ArtifactFiles
) -> None:
    model = new_model(http, digits_source)
    subject = sorted(digits_source.workload.backdoors)[1]
    source_files.remove()  # an unmounted volume, say
    created = ok(
        http.post(
            "/v1/deletion-requests",
            json={"subject_id": subject, "models": [model]},
            headers={"Idempotency-Key": str(uuid.uuid4())},
        ),
        202,
    )

    failed = wait_request(http, created["id"], statuses=("failed",))
    assert failed["failure_reason"] and failed["days_left"] == created["days_left"]
    assert ok(http.get(f"/v1/models/{model}/aliases/production"))["version"] == 1
    first_job = failed["models"][0]["job_id"]
    # what the dashboard makes of the worker's own failure text
    explained = explain(
        DeletionRequestOut.model_validate(failed),
        [JobOut.model_validate(ok(http.get(f"/v1/jobs/{first_job}")))],
    )
    assert explained is not None and "could not be read from the artifact store" in explained.cause
    assert explained.still_serving == [f"{model} v1"]

    source_files.restore()  # the volume is back
    retried = ok(http.post(f"/v1/deletion-requests/{created['id']}:retry"), 202)
    assert retried["status"] == "resolved" and retried["due_at"] == created["due_at"]

    done = wait_request(http, created["id"])

    assert done["due_at"] == created["due_at"] and done["failure_reason"] is None
    assert done["verdict"] == "pass" and done["promoted_versions"] == {model: 2}
    second_job = done["models"][0]["job_id"]
    assert second_job != first_job and set(done["job_ids"]) == {first_job, second_job}
    assert ok(http.get(f"/v1/jobs/{first_job}"))["status"] == "failed"
    assert ok(http.get(f"/v1/jobs/{second_job}"))["status"] == "succeeded"
    assert [e["to_status"] for e in done["timeline"]][-6:] == [
        "failed",
        "resolved",
        "queued",
        "unlearning",
        "verifying",
        "completed",
    ]
    assert ok(http.get(f"/v1/models/{model}/aliases/production"))["version"] == 2
    assert http.get(f"/v1/deletion-requests/{created['id']}/certificate").status_code == 200
    assert ok(http.get("/v1/audit/verify"))["ok"]
