"""One input rule for the whole API: control characters, non-finite numbers and integers past int64 are a
422 problem naming the field, in JSON bodies, NDJSON lines and path or query parameters, and nothing is
stored."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.inputs import INT32_MAX, INT64_MAX, INT64_MIN, body_problems, json_problems
from tests.api.provenance_factory import (
    add_samples,
    assert_problem,
    create_dataset,
    create_model,
    register_version,
    text_samples,
    unique,
)
from tests.api.seeding import unique_subject

NDJSON = {"Content-Type": "application/x-ndjson"}
JSON = {"Content-Type": "application/json"}


def refused(response: Any, *loc: str | int) -> dict[str, Any]:
    """A 422 validation problem whose errors name `loc`."""
    body = assert_problem(response, 422, "validation-error")
    assert [list(loc)] == [error["loc"] for error in body["errors"] if error["loc"] == list(loc)], body
    return body


# ---------------------------------------------------------------- the rule itself (pure)


@pytest.mark.parametrize(
    ("value", "loc", "kind"),
    [
        ({"a": "x\x00y"}, ["body", "a"], "control_character"),
        ({"a": ["ok", "bell\x07"]}, ["body", "a", 1], "control_character"),
        ({"a": "\x9b"}, ["body", "a"], "control_character"),  # C1
        ({"a": "\ud800"}, ["body", "a"], "control_character"),  # lone surrogate
        ({"k\x00": 1}, ["body"], "control_character"),  # an object key
        ({"a": {"b": float("nan")}}, ["body", "a", "b"], "finite_number"),
        ({"a": float("-inf")}, ["body", "a"], "finite_number"),
        ({"a": INT64_MAX + 1}, ["body", "a"], "integer_out_of_range"),
        ({"a": [INT64_MIN - 1]}, ["body", "a", 0], "integer_out_of_range"),
    ],
)
def test_each_kind_of_breach_is_found_where_it_is(value: Any, loc: list[Any], kind: str) -> None:
    assert [(problem["loc"], problem["type"]) for problem in json_problems(value)] == [(loc, kind)]


def test_tabs_newlines_the_int64_bounds_and_plain_unicode_pass() -> None:
    fine = {"text": "line one\n\tline two\r\n", "n": [INT64_MAX, INT64_MIN, 0.5, True, None], "é": "日本 ✓"}
    assert json_problems(fine) == []
    assert body_problems(json.dumps(fine).encode(), "application/json") == []


def test_bodies_are_parsed_only_when_a_byte_scan_finds_a_suspect() -> None:
    # A word or a long digit run inside a string is a suspect, parsed, and found to be fine.
    assert body_problems(b'{"text": "Infinity and NaN, 12345678901234567890"}', "application/json") == []
    assert body_problems(b'{"a": 1e400}', "application/json")[0]["type"] == "finite_number"
    assert body_problems(b'{"a": -Infinity}', "application/json")[0]["type"] == "finite_number"
    assert body_problems(b'{"a": "\\u0000"}', "application/json")[0]["type"] == "control_character"
    # JSON in UTF-16, which the framework reads as well, is parsed and looked at.
    utf16 = json.dumps({"a": "x\x00y"}).encode("utf-16")
    assert body_problems(utf16, "application/json")[0]["loc"] == ["body", "a"]
    # NDJSON lines are numbered as the sample parser numbers them (blank lines count).
    lines = b'{"a": 1}\n\n{"a": "\\b"}\n'
    assert [p["loc"] for p in body_problems(lines, "application/x-ndjson")] == [["body", 2, "a"]]
    # Other media types, and bodies that are not JSON at all, are left to their handlers.
    assert body_problems(b"a\x00b", "text/plain") == []
    assert body_problems(b'{"a": NaN', "application/json") == []


# ---------------------------------------------------------------- JSON bodies


def test_nul_in_any_body_string_is_422_naming_the_field_and_nothing_is_stored(client, auth_a) -> None:
    name = unique("ds")
    refused(
        client.post(
            "/v1/datasets", json={"name": name, "kind": "text", "description": "a\x00b"}, headers=auth_a
        ),
        "body",
        "description",
    )
    assert_problem(client.get(f"/v1/datasets/{name}", headers=auth_a), 404)

    model = unique("model")
    refused(
        client.post(
            "/v1/models", json={"name": model, "task": "causal-lm", "policy": {"k": "\x00"}}, headers=auth_a
        ),
        "body",
        "policy",
        "k",
    )
    refused(
        client.post(
            "/v1/models", json={"name": model, "task": "causal-lm", "policy": {"k\x00": 1}}, headers=auth_a
        ),
        "body",
        "policy",
    )
    assert_problem(client.get(f"/v1/models/{model}", headers=auth_a), 404)

    refused(
        client.post(
            "/v1/webhooks", json={"url": "https://hooks.example.com/\x00", "events": ["*"]}, headers=auth_a
        ),
        "body",
        "url",
    )
    assert client.get("/v1/webhooks", headers=auth_a).json()["items"] == []


def test_version_registration_refuses_nul_and_non_finite_metrics(client, auth_a) -> None:
    dataset = create_dataset(client, auth_a)
    add_samples(client, auth_a, dataset, text_samples({unique_subject(): 2}))
    model = create_model(client, auth_a)
    url = f"/v1/models/{model}/versions"
    body = {"artifact_uri": "s3://bucket/a\x00b", "training_set": {"dataset": dataset}}
    refused(client.post(url, json=body, headers=auth_a), "body", "artifact_uri")
    raw = b'{"artifact_uri": "s3://bucket/x", "training_set": {"dataset": "%s"}, "metrics": {"loss": NaN}}'
    refused(
        client.post(url, content=raw % dataset.encode(), headers={**auth_a, **JSON}),
        "body",
        "metrics",
        "loss",
    )
    raw = b'{"artifact_uri": "s3://bucket/x", "training_set": {"dataset": "%s"}, "metrics": {"loss": 1e400}}'
    refused(
        client.post(url, content=raw % dataset.encode(), headers={**auth_a, **JSON}),
        "body",
        "metrics",
        "loss",
    )
    assert client.get(url, headers=auth_a).json()["items"] == []
    assert register_version(client, auth_a, model, dataset)["version"] == 1  # the same, clean, is fine


def test_deletion_requests_refuse_nul_and_integers_past_int64(client, tenant_a, auth_a) -> None:
    url = "/v1/deletion-requests"
    refused(client.post(url, json={"subject_id": "a\x00b"}, headers=auth_a), "body", "subject_id")
    refused(
        client.post(
            url,
            json={"subject_id": unique_subject(), "callback_url": "https://a.example.com/\x00"},
            headers=auth_a,
        ),
        "body",
        "callback_url",
    )
    big = b'{"sample_ids": [1180591620717411303424]}'
    refused(client.post(url, content=big, headers={**auth_a, **JSON}), "body", "sample_ids", 0)
    assert client.get(url, headers=auth_a).json()["items"] == []
    # The largest int64 is an id like any other: the rule lets it through, and no sample has it.
    fits = client.post(url, json={"sample_ids": [INT64_MAX]}, headers=auth_a)
    assert_problem(fits, 422, "unknown-samples")


def test_cancel_and_extend_reasons_refuse_nul(client, auth_a) -> None:
    created = client.post(
        "/v1/deletion-requests", json={"subject_id": unique_subject()}, headers=auth_a
    ).json()
    url = f"/v1/deletion-requests/{created['id']}"
    refused(client.post(f"{url}:cancel", json={"reason": "no\x00"}, headers=auth_a), "body", "reason")
    refused(client.post(f"{url}:extend", json={"reason": "needs\x00more"}, headers=auth_a), "body", "reason")
    assert client.get(url, headers=auth_a).json()["status"] == created["status"]


# ---------------------------------------------------------------- NDJSON lines


def test_a_bad_ndjson_line_is_422_naming_line_and_field_and_the_batch_stores_nothing(client, auth_a) -> None:
    dataset = create_dataset(client, auth_a)
    samples = text_samples({unique_subject(): 3})
    samples[1]["text"] = "x\x00y"
    body = "\n".join(json.dumps(sample) for sample in samples).encode()
    refused(
        client.post(f"/v1/datasets/{dataset}/samples", content=body, headers={**auth_a, **NDJSON}),
        "body",
        1,
        "text",
    )
    nan_line = b'{"external_id": "e", "subject_id": "s", "text": "t", "label": NaN}'
    refused(
        client.post(f"/v1/datasets/{dataset}/samples", content=nan_line, headers={**auth_a, **NDJSON}),
        "body",
        0,
        "label",
    )
    assert client.get(f"/v1/datasets/{dataset}", headers=auth_a).json()["sample_count"] == 0
    # The JSON array form, the same rule.
    refused(client.post(f"/v1/datasets/{dataset}/samples", json=samples, headers=auth_a), "body", 1, "text")


def test_free_text_keeps_its_tabs_and_newlines(client, auth_a) -> None:
    dataset = create_dataset(client, auth_a)
    sample = {"external_id": "e-1", "subject_id": unique_subject(), "text": "first line\n\tsecond line\r\n"}
    answer = client.post(
        f"/v1/datasets/{dataset}/samples", content=json.dumps(sample).encode(), headers={**auth_a, **NDJSON}
    )
    assert answer.status_code == 200 and answer.json()["created"] == 1, answer.text


# ---------------------------------------------------------------- path and query parameters


def test_control_characters_in_path_and_query_parameters_are_422_naming_them(client, auth_a) -> None:
    refused(client.get("/v1/deletion-requests/%00", headers=auth_a), "path", "request_id")
    refused(client.get("/v1/subjects/a%00b", headers=auth_a), "path", "subject_id")
    refused(client.get("/v1/datasets/ds%09x", headers=auth_a), "path", "dataset")
    refused(client.get("/v1/deletion-requests?model=%01", headers=auth_a), "query", "model")
    refused(client.get("/v1/audit?entity_id=a%00", headers=auth_a), "query", "entity_id")


def test_integer_parameters_past_int64_are_422_but_long_numbers_in_strings_are_not(client, auth_a) -> None:
    model = create_model(client, auth_a)
    refused(
        client.get(f"/v1/models/{model}/versions/99999999999999999999999", headers=auth_a), "path", "version"
    )
    refused(client.get("/v1/datasets?limit=99999999999999999999999", headers=auth_a), "query", "limit")
    # Version numbers live in a 32-bit column: their field says so.
    refused(client.get(f"/v1/models/{model}/versions/{INT32_MAX + 1}", headers=auth_a), "path", "version")
    assert_problem(client.get(f"/v1/models/{model}/versions/{INT32_MAX}", headers=auth_a), 404)
    # A subject identifier may well be a long number: it is a string parameter.
    answer = client.get("/v1/subjects/123456789012345678901234567890", headers=auth_a)
    assert answer.status_code == 200 and answer.json()["samples"] == []


def test_the_rule_answers_before_authentication_like_any_malformed_request(api_app) -> None:
    anonymous = TestClient(api_app)
    refused(anonymous.get("/v1/deletion-requests/%00"), "path", "request_id")
    assert_problem(anonymous.get("/v1/deletion-requests/x"), 401)
