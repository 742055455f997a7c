"""A model's policy is checked when it is registered or changed: a misspelled key is a 422 naming it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.db import session_scope
from tests.api.provenance_factory import assert_problem, create_model, unique

# Every policy key, nested ones included, as an operator would write them.
FULL_POLICY: dict[str, Any] = {
    "alias": "prod",
    "method": "nabla_tau",
    "chain": ["finetune", "deepobliviate"],
    "method_config": {
        "deepobliviate": {"early_stop": True, "eps": 0.02},
        "retrain": {"recipe": {"epochs": 2}},
    },
    "retrain_recipe": {"epochs": 4, "optimizer": "sgd"},
    "gate": {"n_boot": 300, "fprs": [0.01]},
    "probes": {"workload": "digits", "size": "small"},
    "training": {"workload": "digits", "recipe": {"num_blocks": 5}},
}

# (policy, where the error points, in the body's policy)
MISTAKES = [
    ({"methd": "auto"}, ["methd"]),
    ({"method": "scrub"}, ["method"]),
    ({"chain": ["nabla_tau", "scrubber"]}, ["chain", 1]),
    ({"chain": []}, ["chain"]),
    ({"gate": {"mia_auc_tolernce": 0.1}}, ["gate", "mia_auc_tolernce"]),
    ({"gate": {"n_boot": "many"}}, ["gate", "n_boot"]),
    ({"method_config": {"scrub": {}}}, ["method_config", "scrub"]),
    (
        {"method_config": {"nabla_tau": {"learning_rate": 1e-3}}},
        ["method_config", "nabla_tau", "learning_rate"],
    ),
    ({"method_config": {"finetune": {"steps": -1}}}, ["method_config", "finetune", "steps"]),
    (
        {"method_config": {"retrain": {"recipe": {"epoch": 2}}}},
        ["method_config", "retrain", "recipe", "epoch"],
    ),
    ({"retrain_recipe": {"optimizer": "lion"}}, ["retrain_recipe", "optimizer"]),
    ({"probes": {"workload": "digits", "sise": "small"}}, ["probes", "sise"]),
    ({"training": {"workload": "digits", "recipe": {"epochz": 1}}}, ["training", "recipe", "epochz"]),
]


def named_errors(body: dict[str, Any]) -> list[list[Any]]:
    return [error["loc"] for error in body["errors"]]


def test_a_valid_policy_is_kept_as_written(client, auth_a) -> None:
    name = unique("model")
    body = {"name": name, "task": "image-classification", "policy": FULL_POLICY}
    created = client.post("/v1/models", json=body, headers=auth_a)
    assert created.status_code == 201, created.text
    assert created.json()["policy"] == FULL_POLICY
    # only what was set is stored: defaults stay the code's, for every model that did not change them
    assert client.get(f"/v1/models/{name}", headers=auth_a).json()["policy"] == FULL_POLICY


@pytest.mark.parametrize(("policy", "where"), MISTAKES, ids=[str(loc) for _, loc in MISTAKES])
def test_a_mistake_in_a_new_models_policy_is_a_problem_naming_it(client, auth_a, policy, where) -> None:
    name = unique("model")
    response = client.post(
        "/v1/models", json={"name": name, "task": "causal-lm", "policy": policy}, headers=auth_a
    )
    problem = assert_problem(response, 422, "validation-error")
    assert ["body", "policy", *where] in named_errors(problem)
    assert_problem(client.get(f"/v1/models/{name}", headers=auth_a), 404)


def test_patch_replaces_the_policy_and_keeps_what_it_leaves_out(client, auth_a) -> None:
    name = create_model(client, auth_a)
    changed = client.patch(f"/v1/models/{name}", json={"policy": {"gate": {"n_boot": 300}}}, headers=auth_a)
    assert changed.status_code == 200, changed.text
    assert changed.json()["policy"] == {"gate": {"n_boot": 300}}
    described = client.patch(f"/v1/models/{name}", json={"description": "digits v2"}, headers=auth_a)
    assert described.json()["policy"] == {"gate": {"n_boot": 300}}
    assert described.json()["description"] == "digits v2"
    model = client.get(f"/v1/models/{name}", headers=auth_a).json()
    assert (model["policy"], model["description"]) == ({"gate": {"n_boot": 300}}, "digits v2")
    with session_scope() as session:
        changes = session.scalars(
            select(AuditEvent.data).where(
                AuditEvent.action == "model.updated", AuditEvent.entity_id == model["id"]
            )
        ).all()
    assert [change["changed"] for change in changes] == [["policy"], ["description"]]


@pytest.mark.parametrize(("policy", "where"), MISTAKES[:6], ids=[str(loc) for _, loc in MISTAKES[:6]])
def test_a_mistake_in_a_patch_is_a_problem_and_changes_nothing(client, auth_a, policy, where) -> None:
    name = unique("model")
    body = {"name": name, "task": "causal-lm", "policy": {"method": "nabla_tau"}}
    assert client.post("/v1/models", json=body, headers=auth_a).status_code == 201
    response = client.patch(f"/v1/models/{name}", json={"policy": policy}, headers=auth_a)
    assert ["body", "policy", *where] in named_errors(assert_problem(response, 422, "validation-error"))
    assert client.get(f"/v1/models/{name}", headers=auth_a).json()["policy"] == {"method": "nabla_tau"}


def test_patch_needs_models_write_and_the_tenants_own_model(
    client, auth_a, auth_b, make_key, tenant_a
) -> None:
    name = create_model(client, auth_a)
    reader = make_key(tenant_a, ["models:read"])
    assert_problem(client.patch(f"/v1/models/{name}", json={"description": "x"}, headers=reader), 403)
    assert_problem(client.patch(f"/v1/models/{name}", json={"description": "x"}, headers=auth_b), 404)
    assert_problem(client.patch(f"/v1/models/{name}", json={"name": "renamed"}, headers=auth_a), 422)
    assert client.get(f"/v1/models/{name}", headers=auth_a).json()["description"] is None
