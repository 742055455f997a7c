"""A failed deletion request: its deadline keeps running, and POST /v1/deletion-requests/{id}:retry puts it
back into the pipeline (a new job through the outbox), once, for a failed request only."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select

from app.db import session_scope, utcnow
from app.outbox.celery_client import PLAN_TASK
from app.outbox.models import OutboxMessage
from app.requests.models import DeletionRequest
from app.security.scopes import Scope
from tests.dashboard.factory import fail, new_request, start_job
from workers.pipeline.plan import plan_request

URL = "/v1/deletion-requests"
PROBLEM = "application/problem+json"


def plan_tasks_for(request_id: str) -> int:
    with session_scope() as session:
        payloads = session.scalars(select(OutboxMessage.payload).where(OutboxMessage.task_name == PLAN_TASK))
        return sum(request_id in payload.get("request_ids", []) for payload in payloads)


def failed_request(client, tenant_id: str, auth: dict[str, str], days_late: int = 0):
    scenario = new_request(client, tenant_id, auth)
    if days_late:
        with session_scope() as session:
            request = session.get(DeletionRequest, scenario.request_id)
            assert request is not None
            request.received_at -= timedelta(days=30 + days_late)
            request.due_at = utcnow() - timedelta(days=days_late)
    start_job(scenario)
    fail(scenario)
    return scenario


def test_a_failed_request_keeps_its_deadline_running(client, tenant_a, auth_a) -> None:
    scenario = failed_request(client, tenant_a, auth_a, days_late=3)

    failed = client.get(f"{URL}/{scenario.request_id}", headers=auth_a).json()
    assert failed["status"] == "failed"
    assert failed["overdue"] is True and failed["days_left"] == -3
    overdue = client.get(URL, params={"overdue": "true", "limit": 200}, headers=auth_a).json()["items"]
    assert scenario.request_id in [item["id"] for item in overdue]
    # still owed an answer: its deadline may be extended like an open request's
    extended = client.post(f"{URL}/{scenario.request_id}:extend", json={"reason": "retry"}, headers=auth_a)
    assert extended.status_code == 200, extended.text
    assert extended.json()["due_at"] > failed["due_at"]


def test_retry_sends_a_failed_request_back_to_planning(client, tenant_a, auth_a) -> None:
    scenario = failed_request(client, tenant_a, auth_a)
    before = client.get(f"{URL}/{scenario.request_id}", headers=auth_a).json()
    plans_before = plan_tasks_for(scenario.request_id)

    answer = client.post(f"{URL}/{scenario.request_id}:retry", headers=auth_a)

    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "resolved" and body["failure_reason"] is None
    assert body["due_at"] == before["due_at"] and body["received_at"] == before["received_at"]
    assert [(m["status"], m["job_id"]) for m in body["models"]] == [("pending", None)]
    last = body["timeline"][-1]
    assert (last["from_status"], last["to_status"], last["detail"]["retry"]) == ("failed", "resolved", 1)
    assert plan_tasks_for(scenario.request_id) == plans_before + 1
    # the failure stays on record: the old job is still listed, the failed transition still in the timeline
    assert scenario.job_id in body["job_ids"]
    assert "failed" in [entry["to_status"] for entry in body["timeline"]]

    # the planning task it sent gives the model a new job
    (new_job,) = plan_request(scenario.request_id)
    planned = client.get(f"{URL}/{scenario.request_id}", headers=auth_a).json()
    assert new_job != scenario.job_id
    assert planned["status"] == "queued" and planned["models"][0]["job_id"] == new_job
    assert set(planned["job_ids"]) == {scenario.job_id, new_job}


def test_only_a_failed_request_can_be_retried(client, tenant_a, auth_a) -> None:
    scenario = new_request(client, tenant_a, auth_a)
    plans = plan_tasks_for(scenario.request_id)

    answer = client.post(f"{URL}/{scenario.request_id}:retry", headers=auth_a)

    assert answer.status_code == 409 and answer.headers["content-type"].startswith(PROBLEM)
    assert "only a failed request can be retried" in answer.json()["detail"]
    after = client.get(f"{URL}/{scenario.request_id}", headers=auth_a).json()
    assert after["status"] == "resolved" and plan_tasks_for(scenario.request_id) == plans


def test_a_retry_is_sent_once_and_replays_under_its_key(client, tenant_a, auth_a) -> None:
    scenario = failed_request(client, tenant_a, auth_a)
    key = {"Idempotency-Key": str(uuid.uuid4())}

    first = client.post(f"{URL}/{scenario.request_id}:retry", headers={**auth_a, **key})
    replay = client.post(f"{URL}/{scenario.request_id}:retry", headers={**auth_a, **key})
    again = client.post(f"{URL}/{scenario.request_id}:retry", headers=auth_a)

    assert first.status_code == replay.status_code == 202
    assert replay.json() == first.json() and replay.headers.get("Idempotent-Replayed") == "true"
    assert again.status_code == 409  # no longer failed: a second retry without the key is refused
    with session_scope() as session:
        sent = session.scalars(select(OutboxMessage.payload).where(OutboxMessage.task_name == PLAN_TASK))
        retries = [p for p in sent if scenario.request_id in p.get("request_ids", [])]
    assert len(retries) == 2  # intake's planning task and the one retry


def test_retry_needs_the_write_scope_and_the_tenant(client, tenant_a, auth_a, auth_b, make_key) -> None:
    scenario = failed_request(client, tenant_a, auth_a)
    reader = make_key(tenant_a, [Scope.REQUESTS_READ])

    assert client.post(f"{URL}/{scenario.request_id}:retry", headers=reader).status_code == 403
    assert client.post(f"{URL}/{scenario.request_id}:retry", headers=auth_b).status_code == 404
    assert client.get(f"{URL}/{scenario.request_id}", headers=auth_a).json()["status"] == "failed"
