"""Idempotency-Key on creating POSTs: replay, 422 on another body, 409 while in flight, per tenant."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import func, select, text

from app.db import get_engine, session_scope
from app.idempotency.hashing import request_hash
from app.idempotency.models import IdempotencyKey
from app.idempotency.service import ADVISORY_LOCK_CLASS
from app.outbox.models import OutboxMessage
from app.requests.models import DeletionRequest
from app.webhooks.models import WebhookSubscription
from tests.api.seeding import seed, unique_subject

URL = "/v1/deletion-requests"


def _key() -> str:
    return f"key-{uuid.uuid4().hex}"


def _count(model, tenant_id: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).where(model.tenant_id == tenant_id)) or 0


def test_same_request_means_same_method_path_query_and_json_content() -> None:
    base = request_hash("POST", "/v1/x", "", b'{"a": 1, "b": [1, 2]}')
    assert request_hash("post", "/v1/x", "", b'{"b":[1,2],"a":1}') == base
    assert request_hash("POST", "/v1/x", "", b'{"a": 1, "b": [2, 1]}') != base
    assert request_hash("POST", "/v1/y", "", b'{"a": 1, "b": [1, 2]}') != base
    assert request_hash("POST", "/v1/x", "dry=1", b'{"a": 1, "b": [1, 2]}') != base
    ndjson = b'{"a": 1}\n{"a": 2}\n'
    assert request_hash("POST", "/v1/x", "", ndjson) != request_hash(
        "POST", "/v1/x", "", ndjson.replace(b" ", b"")
    )


def test_replay_answers_the_first_response_and_creates_nothing_more(client, tenant_a, auth_a) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 2})
    headers = {**auth_a, "Idempotency-Key": _key()}

    first = client.post(URL, json={"subject_id": subject, "regime": "ccpa"}, headers=headers)
    # same content, other key order and spacing: still the same request
    again = client.post(
        URL,
        content=f'{{ "regime":"ccpa",  "subject_id": "{subject}" }}'.encode(),
        headers={**headers, "content-type": "application/json"},
    )

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert _count(DeletionRequest, tenant_a) == 1
    with session_scope() as session:
        plans = [
            r
            for r in session.scalars(select(OutboxMessage))
            if first.json()["id"] in r.payload.get("request_ids", ())
        ]
    assert len(plans) == 1


def test_same_key_with_another_body_is_refused(client, tenant_a, auth_a) -> None:
    headers = {**auth_a, "Idempotency-Key": _key()}
    assert client.post(URL, json={"subject_id": unique_subject()}, headers=headers).status_code == 202

    answer = client.post(URL, json={"subject_id": unique_subject()}, headers=headers)

    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"].endswith("idempotency-mismatch")
    assert _count(DeletionRequest, tenant_a) == 1


def test_keys_are_scoped_per_tenant(client, tenant_a, tenant_b, auth_a, auth_b) -> None:
    key = _key()
    body = {"subject_id": unique_subject()}
    mine = client.post(URL, json=body, headers={**auth_a, "Idempotency-Key": key})
    theirs = client.post(URL, json=body, headers={**auth_b, "Idempotency-Key": key})
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]
    assert "Idempotent-Replayed" not in theirs.headers
    assert _count(DeletionRequest, tenant_b) == 1


def test_a_failed_request_does_not_use_up_its_key(client, tenant_a, auth_a) -> None:
    headers = {**auth_a, "Idempotency-Key": _key()}
    refused = client.post(
        URL, json={"subject_id": "x@y.z", "callback_url": "http://127.0.0.1/"}, headers=headers
    )
    assert refused.status_code == 422
    accepted = client.post(URL, json={"subject_id": "x@y.z"}, headers=headers)
    assert accepted.status_code == 202
    with session_scope() as session:
        stored = session.scalars(select(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_a)).all()
    assert [(row.state, row.response_status) for row in stored] == [("done", 202)]


def test_replays_need_the_scope_of_the_endpoint(client, tenant_a, auth_a, make_key) -> None:
    key = _key()
    body = {"subject_id": unique_subject()}
    assert client.post(URL, json=body, headers={**auth_a, "Idempotency-Key": key}).status_code == 202
    reader = make_key(tenant_a, ["requests:read"])
    answer = client.post(URL, json=body, headers={**reader, "Idempotency-Key": key})
    assert answer.status_code == 403 and "Idempotent-Replayed" not in answer.headers


@pytest.mark.parametrize("key", ["", "k" * 256, "clé-unicode".encode(), "tab\tinside"])
def test_malformed_keys_are_refused(client, tenant_a, auth_a, key: str | bytes) -> None:
    answer = client.post(
        URL, json={"subject_id": unique_subject()}, headers={**auth_a, "Idempotency-Key": key}
    )
    assert answer.status_code in (400, 422)
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert _count(DeletionRequest, tenant_a) == 0


def test_webhook_creation_replays_its_secret_once_created(client, tenant_a, auth_a) -> None:
    headers = {**auth_a, "Idempotency-Key": _key()}
    body = {"url": "https://hooks.example.com/lethe", "events": ["request.completed"]}
    first = client.post("/v1/webhooks", json=body, headers=headers)
    again = client.post("/v1/webhooks", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["secret"] == first.json()["secret"] and again.json()["id"] == first.json()["id"]
    assert _count(WebhookSubscription, tenant_a) == 1


def _advisory_locks_held() -> int:
    with get_engine().connect() as connection:
        return connection.scalar(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :cls AND granted"),
            {"cls": ADVISORY_LOCK_CLASS},
        )


def test_a_second_request_while_the_first_is_in_flight_gets_409(client, tenant_a, auth_a) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 1})
    headers = {**auth_a, "Idempotency-Key": _key()}
    body = {"subject_id": subject}
    answers: dict[str, object] = {}

    # Hold the first request inside its transaction: writes to deletion_requests wait for this lock.
    blocker = get_engine().connect()
    blocker.execute(text("LOCK TABLE deletion_requests IN SHARE MODE"))
    first = threading.Thread(
        target=lambda: answers.update(first=client.post(URL, json=body, headers=headers))
    )
    first.start()
    try:
        deadline = time.monotonic() + 10
        while _advisory_locks_held() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _advisory_locks_held() >= 1, "the first request never claimed its key"

        second = client.post(URL, json=body, headers=headers)

        assert second.status_code == 409
        assert second.json()["type"].endswith("idempotency-in-flight") and second.headers["Retry-After"]
    finally:
        blocker.rollback()
        blocker.close()
        first.join(15)
    assert answers["first"].status_code == 202
    third = client.post(URL, json=body, headers=headers)
    assert third.status_code == 202 and third.json() == answers["first"].json()
    assert _count(DeletionRequest, tenant_a) == 1
