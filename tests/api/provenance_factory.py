"""Build provenance through the public endpoints (what a data pipeline would do)."""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Any

from fastapi.testclient import TestClient


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_dataset(
    client: TestClient,
    auth: dict[str, str],
    kind: str = "text",
    name: str | None = None,
    label_map: dict[str, int] | None = None,
) -> str:
    name = name or unique("ds")
    body: dict[str, Any] = {"name": name, "kind": kind}
    if label_map is not None:
        body["label_map"] = label_map
    response = client.post("/v1/datasets", json=body, headers=auth)
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


@lru_cache
def stored_causal_lm() -> str:
    """artifact://<id> of a tiny causal LM in the (test session's) artifact store: registering a version
    from the store needs no worker, so it may serve at once."""
    import tempfile
    from pathlib import Path

    from app.settings import get_settings
    from tests.tiny_models import save_gpt2
    from workers.modeling.artifacts import ArtifactStore
    from workers.modeling.formats import load_folder

    with tempfile.TemporaryDirectory() as folder:
        save_gpt2(Path(folder), ["a tiny model for the registry tests"])
        manifest = ArtifactStore(get_settings().artifact_root).put(load_folder(Path(folder)))
    return f"artifact://{manifest.version_id}"


def register_version(
    client: TestClient, auth: dict[str, str], model: str, dataset: str, external_ids: list[str] | None = None
) -> dict[str, Any]:
    """Version n of a causal-lm `model`, trained on the dataset (or the listed samples), ready to serve."""
    training_set: dict[str, Any] = {"dataset": dataset}
    if external_ids is not None:
        training_set["external_ids"] = external_ids
    body = {"artifact_uri": stored_causal_lm(), "training_set": training_set}
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
