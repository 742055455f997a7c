"""Deletion-request intake on Postgres records concurrent requests in shared transactions
(app.requests.intake): what a client sees must not depend on which requests shared a batch, and the
batched path must write what the one-request session path (other databases) writes."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.audit.models import AuditEvent
from app.audit.service import record
from app.db import reset_engine, session_scope
from app.outbox.models import OutboxMessage
from app.requests import intake, views
from app.requests.models import DeletionRequest, RequestEvent
from app.requests.schemas import DeletionRequestCreate
from app.security.auth import Principal
from app.security.keys import create_api_key
from app.security.scopes import ALL_SCOPES
from app.settings import get_settings
from app.tenancy.service import create_tenant
from app.webhooks.models import WebhookDelivery
from tests.api.seeding import seed, unique_subject
from tests.conftest import run_migrations

URL = "/v1/deletion-requests"


def _post_concurrently(client, bodies: list[dict], headers: dict[str, str]) -> list:
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(lambda body: client.post(URL, json=body, headers=headers), bodies))


def _count(model, tenant_id: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).where(model.tenant_id == tenant_id)) or 0


def _audit_actions(request_id: str) -> list[tuple[str, dict]]:
    with session_scope() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.entity_id == request_id).order_by(AuditEvent.seq)
        )
        return [(event.action, event.data) for event in events]


def _tasks_for(request_id: str) -> Counter[str]:
    with session_scope() as session:
        rows = session.scalars(select(OutboxMessage))
        return Counter(row.task_name for row in rows if request_id in row.payload.get("request_ids", ()))


def test_concurrent_requests_are_each_recorded_once_with_an_intact_chain(client, tenant_a, auth_a) -> None:
    subjects = [unique_subject() for _ in range(12)]
    seed(tenant_a, {subject: 2 for subject in subjects[:8]})  # the last four hold nothing

    answers = _post_concurrently(client, [{"subject_id": s} for s in subjects], auth_a)

    assert [answer.status_code for answer in answers] == [202] * 12
    bodies = [answer.json() for answer in answers]
    assert len({body["id"] for body in bodies}) == 12
    assert [body["status"] for body in bodies] == ["resolved"] * 8 + ["no_data"] * 4
    assert [body["sample_count"] for body in bodies] == [2] * 8 + [0] * 4
    assert _count(DeletionRequest, tenant_a) == 12
    for body in bodies:
        actions = [action for action, _ in _audit_actions(body["id"])]
        assert actions == ["deletion_request.received", f"deletion_request.{body['status']}"]
        assert _tasks_for(body["id"])["lethe.plan"] == (1 if body["status"] == "resolved" else 0)
        assert client.get(f"{URL}/{body['id']}", headers=auth_a).json()["timeline"] == body["timeline"]
    assert client.get("/v1/audit/verify", headers=auth_a).json()["ok"] is True


def test_refused_requests_leave_the_rest_of_their_batch_alone(client, tenant_a, auth_a) -> None:
    subjects = [unique_subject() for _ in range(4)]
    seed(tenant_a, {subject: 1 for subject in subjects})
    bodies = [{"subject_id": s} for s in subjects] + [
        {"sample_ids": [2**60]},
        {"subject_id": unique_subject(), "models": ["no-such-model"]},
    ]

    answers = _post_concurrently(client, bodies, auth_a)

    assert [answer.status_code for answer in answers] == [202] * 4 + [422, 422]
    assert answers[4].json()["type"].endswith("unknown-samples")
    assert answers[5].json()["type"].endswith("unknown-models")
    assert _count(DeletionRequest, tenant_a) == 4
    assert client.get("/v1/audit/verify", headers=auth_a).json()["ok"] is True


def test_another_writer_moving_the_chain_meanwhile_costs_a_retry_not_the_chain(
    client, tenant_a, auth_a
) -> None:
    first, second = unique_subject(), unique_subject()
    seed(tenant_a, {first: 1, second: 1})
    assert client.post(URL, json={"subject_id": first}, headers=auth_a).status_code == 202

    # The process believes the chain ends where it does not (as when another process or a worker has
    # appended since): the batch's append must fail and be written again on the locked heads.
    async def believe_a_stale_head() -> None:
        writer = intake.batcher()
        assert writer is not None
        writer.tails[tenant_a] = (10**9, "f" * 64)

    client.portal.call(believe_a_stale_head)
    with session_scope() as session:  # and another writer does append meanwhile
        record(session, tenant_a, "test", "x", "test.appended", {}, "someone")

    answer = client.post(URL, json={"subject_id": second}, headers=auth_a)

    assert answer.status_code == 202
    assert [action for action, _ in _audit_actions(answer.json()["id"])] == [
        "deletion_request.received",
        "deletion_request.resolved",
    ]
    assert client.get("/v1/audit/verify", headers=auth_a).json()["ok"] is True


def test_batched_intake_writes_what_the_orm_path_writes(client, tenant_a, auth_a) -> None:
    batched_subject, orm_subject = unique_subject(), unique_subject()
    seed(tenant_a, {batched_subject: 2, orm_subject: 2}, model_names=("m1", "m2"))
    callback = {"callback_url": "https://hooks.example.com/lethe", "regime": "ccpa"}

    batched = client.post(URL, json={"subject_id": batched_subject, **callback}, headers=auth_a).json()
    principal = Principal(tenant_a, "orm-path", frozenset(ALL_SCOPES))
    with session_scope() as session:
        created = intake.create_request(
            session, principal, DeletionRequestCreate(subject_id=orm_subject, **callback)
        )
        orm = views.created(created, "secret").model_dump(mode="json")

    def comparable(body: dict) -> dict:
        varying = {"id", "received_at", "due_at", "updated_at", "callback_secret"}
        timeline = [{k: v for k, v in entry.items() if k != "at"} for entry in body["timeline"]]
        return {**{k: v for k, v in body.items() if k not in varying}, "timeline": timeline}

    assert comparable(batched) == comparable(orm)
    assert [data for _, data in _audit_actions(batched["id"])] == [
        data for _, data in _audit_actions(orm["id"])
    ]
    assert _tasks_for(batched["id"]) == _tasks_for(orm["id"]) == Counter({"lethe.plan": 1})
    with session_scope() as session:
        for body in (batched, orm):
            stored = session.get(DeletionRequest, body["id"])
            assert (stored.status, stored.regime, stored.callback_url) == (
                "resolved",
                "ccpa",
                callback["callback_url"],
            )
            steps = session.scalars(
                select(RequestEvent.to_status).where(RequestEvent.request_id == body["id"])
            ).all()
            assert steps == ["received", "resolved"]
            deliveries = session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.request_id == body["id"])
            ).all()
            assert [(d.event_type, d.url, d.payload["data"]["models"]) for d in deliveries] == [
                (
                    "request.resolved",
                    callback["callback_url"],
                    sorted(body["models"][i]["model"] for i in range(2)),
                )
            ]


def test_the_hot_path_answers_as_fastapi_does(client, tenant_a, auth_a) -> None:
    """application/json requests take app.requests.router.IntakeRoute's own handler; another JSON type
    takes FastAPI's. A client must not be able to tell them apart."""
    fast_subject, standard_subject = unique_subject(), unique_subject()
    seed(tenant_a, {fast_subject: 2, standard_subject: 2}, model_names=("m1",))
    body = '{{"subject_id": "{}", "regime": "ccpa", "callback_url": "https://hooks.example.com/x"}}'

    fast = client.post(
        URL, content=body.format(fast_subject), headers={**auth_a, "content-type": "application/json"}
    )
    standard = client.post(
        URL,
        content=body.format(standard_subject),
        headers={**auth_a, "content-type": "application/vnd.api+json"},
    )

    assert fast.status_code == standard.status_code == 202
    assert fast.headers["content-type"] == standard.headers["content-type"] == "application/json"
    varying = {"id", "received_at", "due_at", "updated_at", "callback_secret"}

    def comparable(answer) -> dict:
        json_body = answer.json()
        timeline = [{k: v for k, v in entry.items() if k != "at"} for entry in json_body["timeline"]]
        return {**{k: v for k, v in json_body.items() if k not in varying}, "timeline": timeline}

    assert comparable(fast) == comparable(standard)
    assert list(fast.json()) == list(standard.json())  # the same fields in the same order
    assert fast.json()["callback_secret"] and standard.json()["callback_secret"]


def test_requests_the_hot_path_cannot_answer_get_fastapis_answer(client, tenant_a, auth_a) -> None:
    wrong_type = client.post(
        URL, content=b'{"subject_id": 5}', headers={**auth_a, "content-type": "application/json"}
    )
    unknown_field = client.post(URL, json={"subject_id": "a@b.c", "color": "red"}, headers=auth_a)
    not_json = client.post(URL, content=b"subject_id=a", headers={**auth_a, "content-type": "text/plain"})

    assert wrong_type.status_code == unknown_field.status_code == not_json.status_code == 422
    assert wrong_type.json()["errors"][0]["loc"] == ["body", "subject_id"]
    assert unknown_field.json()["errors"][0]["loc"] == ["body", "color"]
    assert _count(DeletionRequest, tenant_a) == 0


@pytest.fixture
def sqlite_api(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """The API on the embedded demo's kind of database (SQLite), where intake takes the session path."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    run_migrations(url)
    os.environ["LETHE_DATABASE_URL"] = url
    get_settings.cache_clear()
    reset_engine()
    try:
        from app.main import create_app

        with TestClient(create_app(get_settings())) as client:
            yield client
    finally:
        os.environ["LETHE_DATABASE_URL"] = database_url
        get_settings.cache_clear()
        reset_engine()


def test_on_sqlite_a_request_is_recorded_replayed_and_refused_as_on_postgres(sqlite_api) -> None:
    with session_scope() as session:
        tenant_id = create_tenant(session, "demo").id
        _, plaintext = create_api_key(session, tenant_id, ALL_SCOPES, name="demo")
    auth = {"Authorization": f"Bearer {plaintext}"}
    subject, nobody = unique_subject(), unique_subject()
    seeded = seed(tenant_id, {subject: 2}, model_names=("m1",))
    body = {"subject_id": subject, "callback_url": "https://hooks.example.com/lethe"}
    keyed = {**auth, "Idempotency-Key": "demo-1"}

    first = sqlite_api.post(URL, json=body, headers=keyed)
    again = sqlite_api.post(URL, json=body, headers=keyed)
    other_body = sqlite_api.post(URL, json={"subject_id": nobody}, headers=keyed)
    unknown = sqlite_api.post(URL, json={"sample_ids": [2**60]}, headers=auth)
    empty = sqlite_api.post(URL, json={"subject_id": nobody}, headers=auth)

    assert first.status_code == again.status_code == 202
    created = first.json()
    assert (created["status"], created["sample_count"]) == ("resolved", 2)
    assert [m["model"] for m in created["models"]] == [seeded.models["m1"]]
    assert [step["to_status"] for step in created["timeline"]] == ["received", "resolved"]
    assert again.json() == created and again.headers["Idempotent-Replayed"] == "true"
    assert other_body.status_code == 422 and other_body.json()["type"].endswith("idempotency-mismatch")
    assert unknown.status_code == 422 and unknown.json()["type"].endswith("unknown-samples")
    assert empty.status_code == 202 and empty.json()["status"] == "no_data"
    assert sqlite_api.get(f"{URL}/{created['id']}", headers=auth).json()["timeline"] == created["timeline"]
    assert _count(DeletionRequest, tenant_id) == 2
    assert [action for action, _ in _audit_actions(created["id"])] == [
        "deletion_request.received",
        "deletion_request.resolved",
    ]
    assert _tasks_for(created["id"]) == Counter({"lethe.plan": 1})
    with session_scope() as session:
        deliveries = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.request_id == created["id"])
        ).all()
        assert [(d.event_type, d.url) for d in deliveries] == [("request.resolved", body["callback_url"])]
        sent = session.scalars(
            select(OutboxMessage).where(OutboxMessage.task_name == "lethe.deliver_webhook")
        )
        assert [row.payload for row in sent] == [{"delivery_id": deliveries[0].id}]
    assert sqlite_api.get("/v1/audit/verify", headers=auth).json()["ok"] is True
