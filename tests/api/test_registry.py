"""Models, versions with their training sets, aliases with compare-and-set, history and rollback."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.jobs.models import Job
from app.outbox.models import OutboxMessage
from app.registry.models import ModelVersion
from app.registry.service import taint_version
from tests.api.provenance_factory import (
    add_samples,
    assert_problem,
    create_dataset,
    create_model,
    register_version,
    stored_causal_lm,
    text_samples,
    unique,
)
from tests.tiny_models import save_gpt2


@pytest.fixture
def trained(client, auth_a) -> tuple[str, str]:
    """A dataset of 4 samples and a model with no version yet."""
    dataset = create_dataset(client, auth_a)
    add_samples(client, auth_a, dataset, text_samples({"ann": 2, "ben": 2}))
    return dataset, create_model(client, auth_a)


def put_alias(client, auth, model: str, version: int, expected: int | None, alias: str = "prod"):
    body = {"version": version, "expected_version": expected, "reason": f"to {version}"}
    return client.put(f"/v1/models/{model}/aliases/{alias}", json=body, headers=auth)


def taint(model_version_id: str) -> None:
    with session_scope() as session:
        taint_version(
            session, session.get(ModelVersion, model_version_id), "trained on forgotten data", "test"
        )


# --- models -----------------------------------------------------------------------------------------------


def test_create_get_list_models(client, auth_a, auth_b) -> None:
    name = unique("model")
    body = {"name": name, "task": "sequence-classification", "policy": {"method": "nabla_tau"}}
    created = client.post("/v1/models", json=body, headers=auth_a)
    assert created.status_code == 201
    assert client.get(f"/v1/models/{name}", headers=auth_a).json()["policy"] == {"method": "nabla_tau"}
    other = create_model(client, auth_a, task="causal-lm")
    listed = client.get("/v1/models?limit=1", headers=auth_a).json()
    assert [item["name"] for item in listed["items"]] == [name]
    rest = client.get(f"/v1/models?cursor={listed['next_cursor']}", headers=auth_a).json()
    assert [item["name"] for item in rest["items"]] == [other] and rest["next_cursor"] is None
    by_task = client.get("/v1/models?task=causal-lm", headers=auth_a).json()["items"]
    assert [item["name"] for item in by_task] == [other]
    assert_problem(client.post("/v1/models", json=body, headers=auth_a), 409)
    assert_problem(client.get(f"/v1/models/{name}", headers=auth_b), 404)
    assert_problem(client.get("/v1/models?cursor=not-a-cursor", headers=auth_a), 422, "invalid-cursor")


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "m", "task": "regression"},
        {"name": "m/x", "task": "causal-lm"},
        {"name": ["m"], "task": "causal-lm"},
    ],
)
def test_bad_model_bodies_are_problems(client, auth_a, payload) -> None:
    assert_problem(client.post("/v1/models", json=payload, headers=auth_a), 422)
    assert client.get("/v1/models", headers=auth_a).json()["items"] == []


def test_model_scopes_and_replay(client, make_key, tenant_a) -> None:
    reader = make_key(tenant_a, ["models:read"])
    writer = make_key(tenant_a, ["models:write"])
    body = {"name": unique("model"), "task": "causal-lm"}
    assert_problem(client.post("/v1/models", json=body, headers=reader), 403)
    headers = {**writer, "Idempotency-Key": unique("key")}
    first = client.post("/v1/models", json=body, headers=headers)
    again = client.post("/v1/models", json=body, headers=headers)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert_problem(client.get("/v1/models", headers=writer), 403)
    assert len(client.get("/v1/models", headers=reader).json()["items"]) == 1


# --- versions ---------------------------------------------------------------------------------------------


def test_versions_are_numbered_and_carry_their_training_sets(client, auth_a, trained) -> None:
    dataset, model = trained
    whole = register_version(client, auth_a, model, dataset)
    assert (whole["version"], whole["status"], whole["training_set_size"], whole["parent"]) == (
        1,
        "registered",
        4,
        None,
    )
    body = {
        "artifact_uri": stored_causal_lm(),
        "artifact_sha256": whole["artifact_sha256"],
        "training_set": {"dataset": dataset, "external_ids": ["s-ann-0", "s-ben-1", "s-ann-0"]},
        "parent_version": 1,
        "metrics": {"accuracy": 0.91},
    }
    listed = client.post(f"/v1/models/{model}/versions", json=body, headers=auth_a)
    assert listed.status_code == 201, listed.text
    got = client.get(f"/v1/models/{model}/versions/2", headers=auth_a).json()
    assert (got["training_set_size"], got["parent"], got["metrics"], got["promotable"]) == (
        2,
        1,
        {"accuracy": 0.91},
        True,
    )
    page = client.get(f"/v1/models/{model}/versions?limit=1", headers=auth_a).json()
    assert [item["version"] for item in page["items"]] == [1]
    rest = client.get(f"/v1/models/{model}/versions?cursor={page['next_cursor']}", headers=auth_a).json()
    assert [item["version"] for item in rest["items"]] == [2]


@pytest.mark.parametrize(
    ("training_set", "why"),
    [
        ({"dataset": "no-such-dataset"}, "unknown-dataset"),
        ({"dataset": "{dataset}", "external_ids": ["s-ann-0", "nope"]}, "unknown-samples"),
        ({"dataset": "{dataset}", "external_ids": []}, "empty-training-set"),
    ],
)
def test_unknown_training_sets_are_refused(client, auth_a, trained, training_set, why) -> None:
    dataset, model = trained
    training_set = {**training_set, "dataset": training_set["dataset"].replace("{dataset}", dataset)}
    body = {"artifact_uri": stored_causal_lm(), "training_set": training_set}
    assert_problem(client.post(f"/v1/models/{model}/versions", json=body, headers=auth_a), 422, why)
    assert client.get(f"/v1/models/{model}/versions", headers=auth_a).json()["items"] == []


def test_empty_dataset_and_unknown_parent_are_refused(client, auth_a) -> None:
    model = create_model(client, auth_a)
    empty = create_dataset(client, auth_a)
    body = {"artifact_uri": stored_causal_lm(), "training_set": {"dataset": empty}}
    assert_problem(
        client.post(f"/v1/models/{model}/versions", json=body, headers=auth_a), 422, "empty-training-set"
    )
    add_samples(client, auth_a, empty, text_samples({"cy": 1}))
    orphan = {**body, "parent_version": 7}
    assert_problem(
        client.post(f"/v1/models/{model}/versions", json=orphan, headers=auth_a), 422, "unknown-version"
    )


def test_version_bad_input_unknown_ids_tenants_and_scopes(
    client, make_key, tenant_a, auth_a, auth_b, trained
) -> None:
    dataset, model = trained
    body = {"artifact_uri": stored_causal_lm(), "training_set": {"dataset": dataset}}
    path = f"/v1/models/{model}/versions"
    assert_problem(client.post(path, json={**body, "artifact_uri": 3}, headers=auth_a), 422)
    assert_problem(client.post(path, json={**body, "artifact_sha256": "xyz"}, headers=auth_a), 422)
    assert_problem(
        client.post(path, content=b"{", headers={**auth_a, "Content-Type": "application/json"}), 422
    )
    assert_problem(client.post("/v1/models/nope/versions", json=body, headers=auth_a), 404)
    assert_problem(client.post(path, json=body, headers=auth_b), 404)
    assert_problem(client.post(path, json=body, headers=make_key(tenant_a, ["models:read"])), 403)
    assert client.get(path, headers=auth_a).json()["items"] == []
    assert_problem(client.get(f"{path}/1", headers=auth_a), 404)
    assert_problem(client.get(f"{path}/one", headers=auth_a), 422)


def test_version_registration_replays(client, auth_a, trained) -> None:
    dataset, model = trained
    headers = {**auth_a, "Idempotency-Key": unique("key")}
    body = {"artifact_uri": stored_causal_lm(), "training_set": {"dataset": dataset}}
    first = client.post(f"/v1/models/{model}/versions", json=body, headers=headers)
    again = client.post(f"/v1/models/{model}/versions", json=body, headers=headers)
    assert first.json() == again.json() and first.json()["version"] == 1
    assert len(client.get(f"/v1/models/{model}/versions", headers=auth_a).json()["items"]) == 1


def test_train_endpoint_queues_a_job_with_provenance(
    client, auth_a, trained, db_session, models_root
) -> None:
    dataset, model = trained
    save_gpt2(models_root / "registry-base", ["ann wrote 0", "ben wrote 1"])
    params = {"base": {"path": "registry-base"}, "recipe": {"epochs": 2}}
    body = {"training_set": {"dataset": dataset, "external_ids": ["s-ann-1"]}, "params": params}
    misspelled = {**body, "params": {**params, "recipe": {"epoch": 2}}}
    refused = assert_problem(
        client.post(f"/v1/models/{model}/versions:train", json=misspelled, headers=auth_a), 422
    )
    assert "epoch" in str(refused)
    response = client.post(f"/v1/models/{model}/versions:train", json=body, headers=auth_a)
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["kind"], job["status"], job["model"], job["candidate_version"]) == (
        "train",
        "queued",
        model,
        1,
    )
    version = client.get(f"/v1/models/{model}/versions/1", headers=auth_a).json()
    assert (version["status"], version["training_set_size"], version["promotable"]) == ("training", 1, False)
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth_a).json()["id"] == job["id"]
    stored = db_session.get(Job, job["id"])
    assert stored.params["training"]["recipe"] == {"epochs": 2}
    assert (
        stored.params["base"]["uri"] == "registry-base" and stored.params["base"]["format"] == "huggingface"
    )
    tasks = db_session.scalars(select(OutboxMessage).where(OutboxMessage.task_name == "lethe.train")).all()
    assert any(task.payload["job_id"] == job["id"] for task in tasks)
    # A version still training cannot serve.
    assert_problem(put_alias(client, auth_a, model, 1, None), 409, "version-not-promotable")


def test_train_endpoint_refuses_bad_input_and_other_tenants(
    client, make_key, tenant_a, auth_a, auth_b, trained
) -> None:
    dataset, model = trained
    path = f"/v1/models/{model}/versions:train"
    assert_problem(client.post(path, json={"training_set": {"dataset": "nope"}}, headers=auth_a), 422)
    assert_problem(client.post(path, json={"params": {}}, headers=auth_a), 422)
    body = {"training_set": {"dataset": dataset}}
    reserved = {**body, "params": {"redispatches": "many"}}  # a key the job keeps for itself
    assert "redispatches" in str(assert_problem(client.post(path, json=reserved, headers=auth_a), 422))
    assert_problem(client.post(path, json=body, headers=auth_b), 404)
    assert_problem(client.post(path, json=body, headers=make_key(tenant_a, ["models:read"])), 403)
    assert client.get(f"/v1/models/{model}/versions", headers=auth_a).json()["items"] == []


# --- aliases ----------------------------------------------------------------------------------------------


def test_alias_compare_and_set(client, auth_a, trained) -> None:
    dataset, model = trained
    for _ in range(3):
        register_version(client, auth_a, model, dataset)
    assert_problem(client.get(f"/v1/models/{model}/aliases/prod", headers=auth_a), 404)
    assert_problem(put_alias(client, auth_a, model, 1, 5), 409, "stale-expected-version")
    created = put_alias(client, auth_a, model, 1, None)
    assert created.status_code == 201 and created.json()["version"] == 1
    stale = assert_problem(put_alias(client, auth_a, model, 2, None), 409, "stale-expected-version")
    assert stale["current_version"] == 1
    moved = put_alias(client, auth_a, model, 2, 1)
    assert moved.status_code == 200 and moved.json()["version"] == 2
    assert_problem(put_alias(client, auth_a, model, 3, 1), 409, "stale-expected-version")
    assert client.get(f"/v1/models/{model}/aliases/prod", headers=auth_a).json()["version"] == 2
    assert_problem(put_alias(client, auth_a, model, 9, 2), 404)
    listed = client.get(f"/v1/models/{model}/aliases", headers=auth_a).json()
    assert [(item["name"], item["version"]) for item in listed["items"]] == [("prod", 2)]


def test_alias_refuses_tainted_versions(client, auth_a, trained) -> None:
    dataset, model = trained
    first = register_version(client, auth_a, model, dataset)
    register_version(client, auth_a, model, dataset)
    taint(first["id"])
    assert_problem(put_alias(client, auth_a, model, 1, None), 409, "version-not-promotable")
    assert put_alias(client, auth_a, model, 2, None).status_code == 201
    assert client.get(f"/v1/models/{model}/versions/1", headers=auth_a).json()["tainted"] is True


def test_alias_bad_input_scopes_and_tenants(client, make_key, tenant_a, auth_a, auth_b, trained) -> None:
    dataset, model = trained
    register_version(client, auth_a, model, dataset)
    path = f"/v1/models/{model}/aliases/prod"
    assert_problem(client.put(path, json={"version": "latest"}, headers=auth_a), 422)
    assert_problem(client.put(path, json={"version": 0}, headers=auth_a), 422)
    assert_problem(
        client.put(f"/v1/models/{model}/aliases/bad:name", json={"version": 1}, headers=auth_a), 422
    )
    writer = make_key(tenant_a, ["models:write", "models:read"])
    assert_problem(client.put(path, json={"version": 1}, headers=writer), 403)
    assert_problem(client.put(path, json={"version": 1}, headers=auth_b), 404)
    assert_problem(client.get(path, headers=auth_a), 404)  # nothing was created
    assert client.put(path, json={"version": 1}, headers=auth_a).status_code == 201
    assert_problem(client.get(path, headers=auth_b), 404)
    assert_problem(client.get(f"{path}/history", headers=auth_b), 404)
    assert_problem(client.post(f"{path}:rollback", headers=auth_b), 404)
    assert_problem(client.post(f"{path}:rollback", headers=writer), 403)


def test_history_and_the_version_served_at_a_time(client, auth_a, trained) -> None:
    dataset, model = trained
    for _ in range(3):
        register_version(client, auth_a, model, dataset)
    before = datetime.now().astimezone()
    put_alias(client, auth_a, model, 1, None)
    put_alias(client, auth_a, model, 2, 1)
    put_alias(client, auth_a, model, 3, 2)
    path = f"/v1/models/{model}/aliases/prod/history"
    history = client.get(path, headers=auth_a).json()
    assert [(c["from_version"], c["to_version"]) for c in history["items"]] == [(2, 3), (1, 2), (None, 1)]
    assert history["items"][0]["reason"] == "to 3" and history["items"][0]["actor"].startswith("key:")
    changed = [datetime.fromisoformat(c["changed_at"]) for c in reversed(history["items"])]

    def served_at(moment: datetime) -> int | None:
        response = client.get(path, params={"at": moment.isoformat()}, headers=auth_a)
        assert response.status_code == 200, response.text
        return response.json()["served_version"]

    assert served_at(before - timedelta(seconds=1)) is None
    assert served_at(changed[0]) == 1
    assert served_at(changed[1] - timedelta(microseconds=1)) == 1
    assert served_at(changed[1]) == 2
    assert served_at(changed[2] + timedelta(days=1)) == 3
    first_page = client.get(f"{path}?limit=2", headers=auth_a).json()
    last_page = client.get(f"{path}?limit=2&cursor={first_page['next_cursor']}", headers=auth_a).json()
    assert [c["to_version"] for c in first_page["items"] + last_page["items"]] == [3, 2, 1]
    assert_problem(client.get(f"{path}?at=yesterday", headers=auth_a), 422)


def test_rollback_skips_tainted_versions_and_refuses_when_none_is_left(client, auth_a, trained) -> None:
    dataset, model = trained
    versions = [register_version(client, auth_a, model, dataset) for _ in range(3)]
    for number in (1, 2, 3):
        put_alias(client, auth_a, model, number, number - 1 if number > 1 else None)
    taint(versions[1]["id"])  # version 2
    rollback = f"/v1/models/{model}/aliases/prod:rollback"
    assert_problem(
        client.post(rollback, json={"expected_version": 2}, headers=auth_a), 409, "stale-expected-version"
    )
    back = client.post(rollback, json={"reason": "bad metrics"}, headers=auth_a)
    assert back.status_code == 200, back.text
    assert back.json()["version"] == 1
    history = client.get(f"/v1/models/{model}/aliases/prod/history", headers=auth_a).json()["items"]
    assert (history[0]["from_version"], history[0]["to_version"], history[0]["reason"]) == (
        3,
        1,
        "bad metrics",
    )
    # Nothing older than 1 served: a further rollback has no target, and the alias stays.
    assert_problem(client.post(rollback, headers=auth_a), 409, "no-rollback-target")
    assert client.get(f"/v1/models/{model}/aliases/prod", headers=auth_a).json()["version"] == 1


def test_colon_actions_route_to_their_own_endpoints(client, auth_a, trained) -> None:
    dataset, model = trained
    register_version(client, auth_a, model, dataset)
    put_alias(client, auth_a, model, 1, None)
    # A GET of ".../prod:rollback" is a lookup of an alias with that name, not the rollback.
    assert_problem(client.get(f"/v1/models/{model}/aliases/prod:rollback", headers=auth_a), 404)
    assert_problem(
        client.put(f"/v1/models/{model}/aliases/prod:rollback", json={"version": 1}, headers=auth_a), 422
    )
    # The rollback itself is reached (and answers on its own terms: no earlier version).
    assert_problem(
        client.post(f"/v1/models/{model}/aliases/prod:rollback", headers=auth_a), 409, "no-rollback-target"
    )
    assert_problem(client.post(f"/v1/models/{model}/aliases/prod:promote", headers=auth_a), 405)
    assert client.post(f"/v1/models/{model}/versions:train", json={}, headers=auth_a).status_code == 422


def test_every_registry_change_is_audited(client, auth_a, trained) -> None:
    dataset, model = trained
    register_version(client, auth_a, model, dataset)
    register_version(client, auth_a, model, dataset)
    put_alias(client, auth_a, model, 1, None)
    put_alias(client, auth_a, model, 2, 1)
    client.post(f"/v1/models/{model}/aliases/prod:rollback", headers=auth_a)
    actions = [e["action"] for e in client.get("/v1/audit?limit=100", headers=auth_a).json()["items"]]
    assert actions == [
        "dataset.created",
        "samples.registered",
        "model.created",
        "model_version.registered",
        "model_version.registered",
        "alias.created",
        "alias.moved",
        "alias.rolled_back",
    ]
    assert client.get("/v1/audit/verify", headers=auth_a).json()["ok"] is True
