"""Build provenance through the public endpoints (what a data pipeline would do)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_dataset(
    client: TestClient, auth: dict[str, str], kind: str = "text", name: str | None = None
) -> str:
    name = name or unique("ds")
    response = client.post("/v1/datasets", json={"name": name, "kind": kind}, headers=auth)
    assert response.status_code == 201, response.text
    return name


def text_samples(subjects: dict[str, int], prefix: str = "s") -> list[dict[str, Any]]:
    """`count` text samples per subject, with unique external ids."""
    return [
        {
            "external_id": f"{prefix}-{subject}-{index}",
            "subject_id": subject,
            "text": f"{subject} wrote {index}",
        }
        for subject, count in subjects.items()
        for index in range(count)
    ]


def add_samples(
    client: TestClient, auth: dict[str, str], dataset: str, samples: list[dict[str, Any]]
) -> dict:
    response = client.post(f"/v1/datasets/{dataset}/samples", json=samples, headers=auth)
    assert response.status_code == 200, response.text
    return response.json()


def create_model(client: TestClient, auth: dict[str, str], task: str = "causal-lm") -> str:
    name = unique("model")
    response = client.post("/v1/models", json={"name": name, "task": task}, headers=auth)
    assert response.status_code == 201, response.text
    return name


def register_version(
    client: TestClient, auth: dict[str, str], model: str, dataset: str, external_ids: list[str] | None = None
) -> dict[str, Any]:
    training_set: dict[str, Any] = {"dataset": dataset}
    if external_ids is not None:
        training_set["external_ids"] = external_ids
    body = {"artifact_uri": f"s3://bucket/{unique('artifact')}", "training_set": training_set}
    response = client.post(f"/v1/models/{model}/versions", json=body, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()


def assert_problem(response: Any, status: int, type_suffix: str | None = None) -> dict[str, Any]:
    """The answer is an RFC 9457 problem with `status` (and the given type); answers its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance", "request_id"} <= body.keys()
    if type_suffix is not None:
        assert body["type"].endswith(type_suffix), body["type"]
    return body
