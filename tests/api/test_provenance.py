"""Datasets, bulk sample registration (JSON array and NDJSON) and the subject lookup."""

from __future__ import annotations

import json

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import make_engine
from app.errors import ProblemError
from app.main import create_app
from app.provenance import service
from app.provenance.models import Dataset, DataSubject, Sample
from app.provenance.schemas import DatasetIn, SampleIn
from app.security.auth import Principal
from app.security.subjects import subject_hmac
from app.settings import get_settings
from app.tenancy.service import create_tenant
from tests.api.provenance_factory import (
    add_samples,
    assert_problem,
    create_dataset,
    create_model,
    register_version,
    text_samples,
    unique,
)
from tests.conftest import run_migrations

NDJSON = {"Content-Type": "application/x-ndjson"}


def sample_count(client: TestClient, auth: dict[str, str], dataset: str) -> int:
    response = client.get(f"/v1/datasets/{dataset}", headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["sample_count"]


# --- datasets ---------------------------------------------------------------------------------------------


def test_create_get_and_list_datasets(client, auth_a) -> None:
    name = unique("ds")
    created = client.post(
        "/v1/datasets", json={"name": name, "kind": "classification", "description": "digits"}, headers=auth_a
    )
    assert created.status_code == 201
    assert created.json()["kind"] == "classification"
    got = client.get(f"/v1/datasets/{name}", headers=auth_a).json()
    assert (got["name"], got["sample_count"], got["description"]) == (name, 0, "digits")

    others = [create_dataset(client, auth_a) for _ in range(2)]
    first = client.get("/v1/datasets?limit=2", headers=auth_a).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    second = client.get(f"/v1/datasets?limit=2&cursor={first['next_cursor']}", headers=auth_a).json()
    names = [item["name"] for item in first["items"] + second["items"]]
    assert names == [name, *others] and second["next_cursor"] is None
    only_text = client.get("/v1/datasets?kind=text", headers=auth_a).json()["items"]
    assert [item["name"] for item in only_text] == others


def test_duplicate_dataset_name_is_a_conflict(client, auth_a, auth_b) -> None:
    name = create_dataset(client, auth_a)
    assert_problem(client.post("/v1/datasets", json={"name": name, "kind": "text"}, headers=auth_a), 409)
    # Names are per tenant.
    assert client.post("/v1/datasets", json={"name": name, "kind": "text"}, headers=auth_b).status_code == 201


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "ok-name", "kind": "images"},
        {"name": "has:colon", "kind": "text"},
        {"name": "", "kind": "text"},
        {"name": 12, "kind": "text"},
        {"kind": "text"},
        {"name": "x", "kind": "text", "unexpected": 1},
    ],
)
def test_bad_dataset_bodies_are_problems(client, auth_a, payload) -> None:
    body = assert_problem(client.post("/v1/datasets", json=payload, headers=auth_a), 422)
    assert body["errors"]
    assert client.get("/v1/datasets", headers=auth_a).json()["items"] == []


def test_malformed_dataset_json_is_a_problem(client, auth_a) -> None:
    response = client.post(
        "/v1/datasets",
        content=b'{"name": "x", "kind":',
        headers={**auth_a, "Content-Type": "application/json"},
    )
    assert_problem(response, 422)
    assert client.get("/v1/datasets", headers=auth_a).json()["items"] == []


def test_dataset_scopes_and_tenants(client, make_key, tenant_a, auth_b) -> None:
    reader = make_key(tenant_a, ["provenance:read"])
    writer = make_key(tenant_a, ["provenance:write"])
    assert_problem(client.post("/v1/datasets", json={"name": "x", "kind": "text"}, headers=reader), 403)
    name = create_dataset(client, writer)
    assert_problem(client.get(f"/v1/datasets/{name}", headers=writer), 403)
    assert client.get(f"/v1/datasets/{name}", headers=reader).status_code == 200
    assert_problem(client.get(f"/v1/datasets/{name}", headers=auth_b), 404)
    assert_problem(client.get("/v1/datasets"), 401)


def test_dataset_creation_replays_with_the_same_idempotency_key(client, auth_a) -> None:
    headers = {**auth_a, "Idempotency-Key": unique("key")}
    body = {"name": unique("ds"), "kind": "text"}
    first = client.post("/v1/datasets", json=body, headers=headers)
    again = client.post("/v1/datasets", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = client.post("/v1/datasets", json={**body, "name": unique("ds")}, headers=headers)
    assert_problem(other, 422, "idempotency-mismatch")
    assert len(client.get("/v1/datasets", headers=auth_a).json()["items"]) == 1


# --- samples ----------------------------------------------------------------------------------------------


def test_bulk_json_then_ndjson_counts_new_and_existing(client, auth_a) -> None:
    dataset = create_dataset(client, auth_a)
    samples = text_samples({"alice": 3, "bob": 2})
    assert add_samples(client, auth_a, dataset, samples) == {
        "dataset": dataset,
        "received": 5,
        "created": 5,
        "existing": 0,
    }
    extra = {"external_id": "new-1", "subject_id": "carol", "text": "carol's line"}
    ndjson = "\n".join(json.dumps(sample) for sample in [*samples[:2], extra]) + "\n\n"
    response = client.post(f"/v1/datasets/{dataset}/samples", content=ndjson, headers={**auth_a, **NDJSON})
    assert response.status_code == 200, response.text
    assert response.json() == {"dataset": dataset, "received": 3, "created": 1, "existing": 2}
    assert sample_count(client, auth_a, dataset) == 6


def test_classification_samples_with_features_and_labels(client, auth_a, db_session) -> None:
    label_map = {"negative": 0, "positive": 1, "mixed": 3}
    dataset = create_dataset(client, auth_a, kind="classification", label_map=label_map)
    samples = [
        {"external_id": "img-0", "subject_id": "dora", "features": [0.0, 0.5, 1.0], "label": 3},
        {"external_id": "txt-0", "subject_id": "dora", "text": "great product", "label": "positive"},
    ]
    assert add_samples(client, auth_a, dataset, samples)["created"] == 2
    rows = db_session.scalars(select(Sample).where(Sample.subject_hmac == subject_hmac("dora"))).all()
    stored = {row.external_id: (row.features, row.label, row.text) for row in rows}
    assert stored == {"img-0": ([0.0, 0.5, 1.0], 3, None), "txt-0": (None, 1, "great product")}
    assert client.get(f"/v1/datasets/{dataset}", headers=auth_a).json()["label_map"] == label_map


@pytest.mark.parametrize(
    ("sample", "field", "why"),
    [
        (
            {"features": [1.0, 2.0, 3.0], "label": "malignant"},
            "label",
            "is not a class of the dataset's label_map",
        ),
        ({"features": [1.0, 2.0, 3.0], "label": 7}, "label", "is not a value of the dataset's label_map"),
        ({"features": [1.0, 2.0, 3.0], "label": -1}, "label", "an integer >= 0"),
        ({"features": [1.0, 2.0], "label": 0}, "features", "the dataset's are [3]"),
        ({"features": [1.0, "x", 3.0], "label": 0}, "features", "list of finite numbers"),
        ({"features": [[1.0], [2.0, 3.0]], "label": 0}, "features", "list of finite numbers"),
        ({"features": [1.0, 2.0, 3.0]}, "label", "needs a label"),
    ],
)
def test_samples_a_task_cannot_use_fail_the_whole_batch(client, auth_a, sample, field, why) -> None:
    dataset = create_dataset(client, auth_a, kind="classification", label_map={"benign": 0, "mixed": 1})
    add_samples(
        client,
        auth_a,
        dataset,
        [{"external_id": "first", "subject_id": "eve", "features": [0, 0, 1], "label": 0}],
    )
    good = {"external_id": "fine", "subject_id": "eve", "features": [0.5, 0.5, 0.5], "label": "benign"}
    batch = [good, {"external_id": "bad", "subject_id": "eve", **sample}]
    body = assert_problem(client.post(f"/v1/datasets/{dataset}/samples", json=batch, headers=auth_a), 422)
    (error,) = body["errors"]
    assert error["loc"] == ["body", 1, field] and why in error["msg"]
    assert sample_count(client, auth_a, dataset) == 1  # the good sample of the batch was not stored either


def test_string_labels_need_a_label_map(client, auth_a) -> None:
    dataset = create_dataset(client, auth_a, kind="classification")
    batch = [{"external_id": "a", "subject_id": "eve", "text": "hi", "label": "spam"}]
    body = assert_problem(client.post(f"/v1/datasets/{dataset}/samples", json=batch, headers=auth_a), 422)
    assert "label_map" in body["errors"][0]["msg"]
    bad_maps = [{"a": 0, "b": 0}, {"a": -1}]
    for label_map in bad_maps:
        body = {"name": unique("ds"), "kind": "classification", "label_map": label_map}
        assert_problem(client.post("/v1/datasets", json=body, headers=auth_a), 422)
    text = {"name": unique("ds"), "kind": "text", "label_map": {"a": 0}}
    assert_problem(client.post("/v1/datasets", json=text, headers=auth_a), 422)


def test_subject_ids_are_stored_only_as_keyed_hmacs(client, auth_a, db_session) -> None:
    dataset = create_dataset(client, auth_a)
    subject = f"Erin-{unique('x')}@Example.com"
    add_samples(client, auth_a, dataset, text_samples({subject: 2}))
    rows = db_session.scalars(select(Sample).where(Sample.external_id.like(f"s-{subject}-%"))).all()
    assert len(rows) == 2
    assert {row.subject_hmac for row in rows} == {subject_hmac(subject.lower())}
    assert subject not in rows[0].subject_hmac and subject.lower() not in rows[0].subject_hmac
    assert db_session.scalars(
        select(DataSubject).where(DataSubject.subject_hmac == rows[0].subject_hmac)
    ).one()


def test_same_external_id_with_other_content_fails_the_whole_batch(client, auth_a) -> None:
    dataset = create_dataset(client, auth_a)
    add_samples(client, auth_a, dataset, text_samples({"frank": 2}))
    changed = {"external_id": "s-frank-0", "subject_id": "frank", "text": "edited"}
    batch = [{"external_id": "brand-new", "subject_id": "gina", "text": "hi"}, changed]
    body = assert_problem(client.post(f"/v1/datasets/{dataset}/samples", json=batch, headers=auth_a), 409)
    assert "s-frank-0" in body["detail"]
    assert sample_count(client, auth_a, dataset) == 2  # "brand-new" was not kept either


def test_repeated_external_id_inside_one_batch(client, auth_a) -> None:
    dataset = create_dataset(client, auth_a)
    same = {"external_id": "dup", "subject_id": "hank", "text": "x"}
    assert add_samples(client, auth_a, dataset, [same, same]) == {
        "dataset": dataset,
        "received": 2,
        "created": 1,
        "existing": 1,
    }
    clash = [{**same, "external_id": "dup2"}, {**same, "external_id": "dup2", "text": "y"}]
    assert_problem(client.post(f"/v1/datasets/{dataset}/samples", json=clash, headers=auth_a), 409)
    assert sample_count(client, auth_a, dataset) == 1


@pytest.mark.parametrize(
    ("kind", "sample"),
    [
        ("text", {"external_id": "a", "subject_id": "s"}),  # text dataset without text
        ("text", {"external_id": "a", "subject_id": "s", "text": 5}),
        ("text", {"external_id": "", "subject_id": "s", "text": "t"}),
        ("text", {"external_id": "a", "text": "t"}),  # no subject
        ("text", {"external_id": "a", "subject_id": "s", "text": "t", "secret": 1}),
        ("classification", {"external_id": "a", "subject_id": "s", "text": "t"}),  # no label
        ("classification", {"external_id": "a", "subject_id": "s", "label": 1}),  # no content
        ("classification", {"external_id": "a", "subject_id": "s", "features": "oops", "label": 1}),
    ],
)
def test_invalid_samples_are_problems_and_nothing_is_stored(client, auth_a, kind, sample) -> None:
    dataset = create_dataset(client, auth_a, kind=kind)
    good = {"external_id": "good", "subject_id": "s", "text": "t", "label": 0}
    response = client.post(f"/v1/datasets/{dataset}/samples", json=[good, sample], headers=auth_a)
    body = assert_problem(response, 422)
    assert body["errors"][0]["loc"][:2] == ["body", 1]
    assert sample_count(client, auth_a, dataset) == 0


def test_malformed_bodies_are_problems_and_nothing_is_stored(client, auth_a) -> None:
    dataset = create_dataset(client, auth_a)
    path = f"/v1/datasets/{dataset}/samples"
    json_headers = {**auth_a, "Content-Type": "application/json"}
    assert_problem(client.post(path, content=b'[{"external_id": "a",', headers=json_headers), 422)
    assert_problem(client.post(path, content=b'{"external_id": "a"}', headers=json_headers), 422)
    assert_problem(client.post(path, json=[], headers=auth_a), 422)
    good_line = json.dumps({"external_id": "a", "subject_id": "s", "text": "t"})
    ndjson = f"{good_line}\n{{not json}}\n".encode()
    body = assert_problem(client.post(path, content=ndjson, headers={**auth_a, **NDJSON}), 422)
    assert body["errors"][0]["loc"][:2] == ["body", 1]  # the line that broke
    assert_problem(client.post(path, content=b"a,b", headers={**auth_a, "Content-Type": "text/csv"}), 415)
    assert sample_count(client, auth_a, dataset) == 0


def test_oversized_batch_is_refused_and_nothing_is_stored(database_url, auth_a) -> None:
    small = get_settings().model_copy(update={"max_body_bytes": 2_000})
    with TestClient(create_app(small)) as limited:
        dataset = create_dataset(limited, auth_a)
        samples = text_samples({"ivan": 60})
        assert_problem(limited.post(f"/v1/datasets/{dataset}/samples", json=samples, headers=auth_a), 413)
        assert sample_count(limited, auth_a, dataset) == 0


def test_too_many_samples_in_one_request(client, auth_a, monkeypatch) -> None:
    dataset = create_dataset(client, auth_a)
    monkeypatch.setattr(get_settings(), "max_bulk_samples", 3)
    response = client.post(f"/v1/datasets/{dataset}/samples", json=text_samples({"jo": 4}), headers=auth_a)
    assert_problem(response, 422)
    assert sample_count(client, auth_a, dataset) == 0


def test_samples_need_the_scope_and_the_tenants_dataset(client, make_key, tenant_a, auth_a, auth_b) -> None:
    dataset = create_dataset(client, auth_a)
    samples = text_samples({"kim": 1})
    reader = make_key(tenant_a, ["provenance:read"])
    assert_problem(client.post(f"/v1/datasets/{dataset}/samples", json=samples, headers=reader), 403)
    assert_problem(client.post(f"/v1/datasets/{dataset}/samples", json=samples, headers=auth_b), 404)
    assert_problem(client.post("/v1/datasets/no-such-dataset/samples", json=samples, headers=auth_a), 404)
    assert sample_count(client, auth_a, dataset) == 0


def test_sample_batch_replays_with_the_same_idempotency_key(client, auth_a) -> None:
    dataset = create_dataset(client, auth_a)
    headers = {**auth_a, "Idempotency-Key": unique("key")}
    samples = text_samples({"lee": 2})
    first = client.post(f"/v1/datasets/{dataset}/samples", json=samples, headers=headers)
    again = client.post(f"/v1/datasets/{dataset}/samples", json=samples, headers=headers)
    assert first.json()["created"] == 2
    assert again.json() == first.json() and again.headers.get("Idempotent-Replayed") == "true"


# --- subjects ---------------------------------------------------------------------------------------------


def test_subject_lookup_finds_samples_and_the_versions_trained_on_them(client, auth_a) -> None:
    dataset = create_dataset(client, auth_a)
    subject = f"mona-{unique('x')}@example.com"
    add_samples(client, auth_a, dataset, text_samples({subject: 2, "nick": 2}))
    whole = create_model(client, auth_a)
    register_version(client, auth_a, whole, dataset)
    listed = create_model(client, auth_a)
    register_version(client, auth_a, listed, dataset, external_ids=["s-nick-0"])
    register_version(client, auth_a, listed, dataset, external_ids=[f"s-{subject}-1"])
    # Added after the versions were registered: not part of their training sets.
    late = create_model(client, auth_a)
    add_samples(client, auth_a, dataset, [{"external_id": "late", "subject_id": subject, "text": "later"}])

    # Clients may send the identifier in another spelling: it is normalised before hashing.
    spelled = f"  {subject.upper()} "
    response = client.get(f"/v1/subjects/{spelled}", headers=auth_a)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["subject_id"] == spelled
    assert [sample["external_id"] for sample in body["samples"]] == [
        f"s-{subject}-0",
        f"s-{subject}-1",
        "late",
    ]
    assert all(
        sample["dataset"] == dataset and len(sample["content_hash"]) == 64 for sample in body["samples"]
    )
    trained = {(item["model"], item["version"]) for item in body["model_versions"]}
    assert trained == {(whole, 1), (listed, 2)}
    assert late not in {item["model"] for item in body["model_versions"]}


def test_subject_lookup_is_per_tenant_and_scoped(client, make_key, tenant_a, auth_a, auth_b) -> None:
    dataset = create_dataset(client, auth_a)
    add_samples(client, auth_a, dataset, text_samples({"olga": 1}))
    other = client.get("/v1/subjects/olga", headers=auth_b)
    assert other.status_code == 200
    assert other.json()["samples"] == [] and other.json()["model_versions"] == []
    assert_problem(client.get("/v1/subjects/olga", headers=make_key(tenant_a, ["provenance:write"])), 403)


def test_the_demo_sqlite_database_registers_samples_the_same_way(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    run_migrations(url)
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            tenant = create_tenant(session, "demo")
            principal = Principal(tenant_id=tenant.id, key_id="k" * 16, scopes=frozenset())
            dataset = service.create_dataset(session, principal, DatasetIn(name="d", kind="text"))
            batch = [SampleIn(**sample) for sample in text_samples({"Zoe": 2, "yuri": 1})]
            assert service.register_samples(session, principal, dataset, batch).created == 3
            assert service.register_samples(session, principal, dataset, batch[:2]).existing == 2
            changed = [batch[0].model_copy(update={"text": "edited"})]
            with pytest.raises(ProblemError) as refused:
                service.register_samples(session, principal, dataset, changed)
            assert refused.value.status == 409
            session.commit()
            found = service.subject_provenance(session, tenant.id, " ZOE ")
            assert [sample.external_id for sample in found.samples] == ["s-Zoe-0", "s-Zoe-1"]
            assert session.scalar(select(func.count()).select_from(DataSubject)) == 2
    finally:
        engine.dispose()


# --- samples name existing datasets (checked per statement on Postgres, per row on SQLite) ---------------


def new_dataset(session: Session, tenant_id: str | None = None) -> tuple[Principal, Dataset]:
    """A dataset of a new tenant (or of `tenant_id`), through the service layer."""
    tenant_id = tenant_id or create_tenant(session, unique("t")).id
    principal = Principal(tenant_id=tenant_id, key_id="k" * 16, scopes=frozenset())
    return principal, service.create_dataset(session, principal, DatasetIn(name=unique("d"), kind="text"))


@pytest.mark.parametrize("database", ["postgres", "sqlite"])
def test_samples_must_name_an_existing_dataset_and_keep_it(database, database_url, tmp_path) -> None:
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'demo.db'}"
        run_migrations(url)
    else:
        url = database_url
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            principal, dataset = new_dataset(session)
            batch = [SampleIn(**sample) for sample in text_samples({"ines": 2})]
            service.register_samples(session, principal, dataset, batch)
            _, empty = new_dataset(session, principal.tenant_id)
            session.commit()
            stray = (
                "INSERT INTO samples (tenant_id, dataset_id, external_id, subject_hmac, content_hash,"
                " created_at) VALUES (:tenant, :dataset, 'x', 'h', 'c', CURRENT_TIMESTAMP)"
            )
            refused = [
                (stray, {"tenant": principal.tenant_id, "dataset": "no-such-dataset"}),
                (
                    "UPDATE samples SET dataset_id = 'no-such-dataset' WHERE dataset_id = :id",
                    {"id": dataset.id},
                ),
                ("DELETE FROM datasets WHERE id = :id", {"id": dataset.id}),
                ("UPDATE datasets SET id = 'renumbered' WHERE id = :id", {"id": dataset.id}),
            ]
            for statement, params in refused:
                with pytest.raises(IntegrityError):
                    session.execute(text(statement), params)
                session.rollback()
            assert (
                session.scalar(
                    select(func.count()).select_from(Sample).where(Sample.dataset_id == dataset.id)
                )
                == 2
            )
            # What the rules allow: moving samples to another dataset, deleting a dataset without samples.
            session.execute(
                text("UPDATE samples SET dataset_id = :to WHERE dataset_id = :id"),
                {"to": empty.id, "id": dataset.id},
            )
            session.execute(text("DELETE FROM datasets WHERE id = :id"), {"id": dataset.id})
            session.rollback()
    finally:
        engine.dispose()


def test_a_dataset_cannot_be_deleted_under_samples_being_registered(database_url) -> None:
    """The per-statement check locks the datasets it found, as a foreign key would: a delete waits for
    the registering transaction, then sees its samples and is refused."""
    raw_url = database_url.replace("postgresql+psycopg", "postgresql")
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            principal, dataset = new_dataset(session)
            session.commit()
            tenant_id, dataset_id = principal.tenant_id, dataset.id
    finally:
        engine.dispose()
    with psycopg.connect(raw_url) as registering, psycopg.connect(raw_url) as deleting:
        registering.execute(
            "INSERT INTO samples (tenant_id, dataset_id, external_id, subject_hmac, content_hash, created_at)"
            " VALUES (%s, %s, 'x', 'h', 'c', now())",
            (tenant_id, dataset_id),
        )
        deleting.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            deleting.execute("DELETE FROM datasets WHERE id = %s", (dataset_id,))
        deleting.rollback()
        registering.commit()
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            deleting.execute("DELETE FROM datasets WHERE id = %s", (dataset_id,))
