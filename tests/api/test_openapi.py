"""The OpenAPI document tells the truth: every error an operation can answer is declared as problem+json
with the Problem schema the service really sends, every operation is described, create answers link to
the operation that reads what they made, and the documentation pages load without a CDN."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.errors import PROBLEM_CONTENT_TYPE, ProblemDetails
from app.openapi import CREATE_LINKS
from tests.api.provenance_factory import create_dataset, unique


@pytest.fixture(scope="module")
def document(api_app) -> dict[str, Any]:
    return TestClient(api_app).get("/openapi.json").json()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in document["paths"].items() for method, op in item.items()]


def test_every_operation_is_described(document) -> None:
    assert [(path, method) for path, method, op in operations(document) if not op.get("description")] == []


def test_every_error_answer_is_problem_json_with_the_problem_schema(document) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, method, op in operations(document):
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert response["content"] == {
                    PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, (
                    path,
                    method,
                    status,
                )
                assert response["description"], (path, method, status)


def test_the_shared_errors_are_declared_where_they_apply(document) -> None:
    for path, method, op in operations(document):
        declared = {int(status) for status in op["responses"]}
        assert {422, 500} <= declared, (path, method)
        if op.get("security"):
            assert {401, 403, 503} <= declared, (path, method)
        if path.startswith("/v1/"):
            assert 429 in declared, (path, method)
        if "{" in path:
            assert 404 in declared, (path, method)
        if "requestBody" in op:
            assert 413 in declared, (path, method)
    by_id = {op["operationId"]: op for _, _, op in operations(document)}
    assert {"409", "415"} <= by_id["register_samples"]["responses"].keys()
    assert "409" in by_id["put_alias"]["responses"] and "409" in by_id["rollback_alias"]["responses"]


def test_real_error_answers_match_the_problem_schema(client, auth_a) -> None:
    answers = [
        client.get("/v1/datasets"),  # 401
        client.get(f"/v1/datasets/{unique('none')}", headers=auth_a),  # 404
        client.post("/v1/datasets", json={"name": "x", "kind": "photos"}, headers=auth_a),  # 422 (schema)
        client.get("/v1/deletion-requests/%00", headers=auth_a),  # 422 (input rule)
    ]
    for answer in answers:
        assert answer.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
        ProblemDetails.model_validate(answer.json())  # the model the Problem schema is generated from
    assert [answer.status_code for answer in answers] == [401, 404, 422, 422]


def test_create_answers_link_to_the_read_that_takes_what_they_answer(client, auth_a, document) -> None:
    by_id = {op["operationId"]: (path, op) for path, _, op in operations(document)}
    for create, status, read, _ in CREATE_LINKS:
        link = by_id[create][1]["responses"][status]["links"][read]
        read_path = by_id[read][0]
        assert set(link["parameters"]) == set(re.findall(r"{(\w+)}", read_path)), (create, read)
    # What the dataset link says, done: the name a create answers is what GET takes.
    name = create_dataset(client, auth_a)
    assert client.get(f"/v1/datasets/{name}", headers=auth_a).status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_documentation_pages_load_their_assets_from_the_api_itself(client, page) -> None:
    html = client.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert assets and all(asset.startswith("/docs/static/") for asset in assets), assets
    assert "https://" not in html.text and "http://" not in html.text
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 1000, asset
