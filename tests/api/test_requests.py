"""Deletion requests: intake, reading, lists, cancellation, deadlines (API.md, Deletion requests)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from app.audit.models import AuditEvent
from app.db import session_scope
from app.jobs.models import Job, JobAttempt, JobRequest
from app.outbox.models import OutboxMessage
from app.registry.models import ModelVersion, VersionStatus
from app.requests import intake, lifecycle
from app.requests.deadlines import add_months, days_left, deadline_for, extended_due_at, is_overdue
from app.requests.models import (
    DeletionRequest,
    DeletionRequestModel,
    DeletionRequestSample,
    RequestEvent,
    RequestStatus,
)
from app.settings import Settings, get_settings
from tests.api.seeding import seed, unique_subject

URL = "/v1/deletion-requests"
PROBLEM = "application/problem+json"


def _requests_of(tenant_id: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).where(DeletionRequest.tenant_id == tenant_id)) or 0


def _audit_of(request_id: str) -> list[AuditEvent]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.entity_id == request_id).order_by(AuditEvent.seq)
            )
        )


def _plan_tasks(request_id: str) -> list[OutboxMessage]:
    with session_scope() as session:
        return [
            row
            for row in session.scalars(select(OutboxMessage).where(OutboxMessage.task_name == "lethe.plan"))
            if request_id in row.payload.get("request_ids", ())
        ]


def _move(request_id: str, *statuses: str, detail: dict | None = None) -> None:
    """Walk a request through statuses as the pipeline does."""
    with session_scope() as session:
        request = session.get(DeletionRequest, request_id)
        for status in statuses:
            lifecycle.change_status(session, request, status, actor="worker", detail=detail)


# ---------------------------------------------------------------- deadlines (pure)


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("received", "due"),
    [
        (_utc(2024, 1, 15, 10), _utc(2024, 2, 15, 10)),
        (_utc(2024, 1, 31, 10), _utc(2024, 2, 29, 10)),  # leap year: month end clamps to the 29th
        (_utc(2023, 1, 31, 10), _utc(2023, 2, 28, 10)),
        (_utc(2024, 3, 31, 23, 59), _utc(2024, 4, 30, 23, 59)),
        (_utc(2024, 12, 31), _utc(2025, 1, 31)),  # across the year
    ],
)
def test_gdpr_deadline_is_one_calendar_month_clamped_to_month_end(received: datetime, due: datetime) -> None:
    assert deadline_for("gdpr", received, Settings()).due_at == due


def test_gdpr_extension_reaches_three_months_from_receipt_at_most() -> None:
    received = _utc(2024, 11, 30, 8)
    deadline = deadline_for("gdpr", received, Settings())
    assert deadline.due_at == _utc(2024, 12, 30, 8)
    assert deadline.latest_due_at == _utc(2025, 2, 28, 8)
    assert extended_due_at("gdpr", received, deadline.due_at, Settings()) == _utc(2025, 2, 28, 8)
    assert extended_due_at("gdpr", received, deadline.due_at, Settings(), days=10) == _utc(2025, 1, 9, 8)
    with pytest.raises(ValueError, match="at most 60 more days"):
        extended_due_at("gdpr", received, deadline.due_at, Settings(), days=61)
    with pytest.raises(ValueError, match="already at the GDPR maximum"):
        extended_due_at("gdpr", received, deadline.latest_due_at, Settings(), days=1)


def test_ccpa_deadline_is_45_days_extendable_by_45() -> None:
    received = _utc(2024, 2, 20, 12)
    deadline = deadline_for("ccpa", received, Settings())
    assert deadline.due_at == _utc(2024, 4, 5, 12)
    assert deadline.latest_due_at == _utc(2024, 5, 20, 12)
    assert extended_due_at("ccpa", received, deadline.due_at, Settings()) == deadline.latest_due_at


def test_days_left_counts_calendar_days_and_goes_negative_when_late() -> None:
    due = _utc(2024, 2, 29, 10)
    assert days_left(due, at=_utc(2024, 1, 31, 10)) == 29
    assert days_left(due, at=_utc(2024, 2, 29, 23)) == 0
    assert days_left(due, at=_utc(2024, 3, 2, 1)) == -2
    assert not is_overdue(due, at=_utc(2024, 2, 29, 9))
    assert is_overdue(due, at=_utc(2024, 2, 29, 11))


# ---------------------------------------------------------------- intake


def test_subject_request_resolves_samples_and_models_in_one_transaction(client, tenant_a, auth_a) -> None:
    subject = unique_subject()
    seeded = seed(tenant_a, {subject: 3, unique_subject(): 2}, model_names=("m1", "m2"))

    answer = client.post(URL, json={"subject_id": subject}, headers=auth_a)

    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "resolved"
    assert body["regime"] == "gdpr" and body["method"] == "auto"
    assert body["sample_count"] == 3
    assert sorted(m["model"] for m in body["models"]) == sorted(seeded.models.values())
    received = datetime.fromisoformat(body["received_at"])
    assert datetime.fromisoformat(body["due_at"]) == add_months(received, 1)
    assert body["days_left"] == days_left(add_months(received, 1))
    assert [(e["from_status"], e["to_status"]) for e in body["timeline"]] == [
        (None, "received"),
        ("received", "resolved"),
    ]
    assert subject not in answer.text and "callback_secret" in body and body["callback_secret"] is None

    with session_scope() as session:
        stored = session.get(DeletionRequest, body["id"])
        assert stored.tenant_id == tenant_a and stored.status == "resolved"
        assert stored.subject_hmac and subject not in stored.subject_hmac
        samples = set(
            session.scalars(
                select(DeletionRequestSample.sample_id).where(DeletionRequestSample.request_id == body["id"])
            )
        )
        assert samples == set(seeded.samples[subject])
        assert session.scalar(select(func.count()).where(DeletionRequestModel.request_id == body["id"])) == 2
    tasks = _plan_tasks(body["id"])
    assert len(tasks) == 1 and tasks[0].payload == {"request_ids": [body["id"]]}
    audit = _audit_of(body["id"])
    assert [event.action for event in audit] == ["deletion_request.received", "deletion_request.resolved"]
    assert all(subject not in json.dumps(event.data) for event in audit)
    assert all(event.actor and event.actor.startswith("key:") for event in audit)
    assert [event.seq for event in audit] == [audit[0].seq, audit[0].seq + 1]
    assert client.get("/v1/audit/verify", headers=auth_a).json()["ok"] is True


def test_subject_id_is_matched_in_its_normalised_form(client, tenant_a, auth_a) -> None:
    seeded = seed(tenant_a, {"Mixed.Case@Example.com": 2})
    answer = client.post(URL, json={"subject_id": "  mixed.case@EXAMPLE.com "}, headers=auth_a)
    assert answer.status_code == 202
    assert answer.json()["sample_count"] == len(seeded.samples["Mixed.Case@Example.com"])


def test_unknown_subject_is_no_data_without_planning_work(client, tenant_a, auth_a) -> None:
    seed(tenant_a, {unique_subject(): 2})
    answer = client.post(URL, json={"subject_id": unique_subject(), "regime": "ccpa"}, headers=auth_a)

    assert answer.status_code == 202
    body = answer.json()
    assert body["status"] == "no_data" and body["sample_count"] == 0 and body["models"] == []
    assert body["timeline"][-1]["to_status"] == "no_data"
    assert _plan_tasks(body["id"]) == []
    assert [e.action for e in _audit_of(body["id"])][-1] == "deletion_request.no_data"
    listed = client.get(f"{URL}/{body['id']}", headers=auth_a).json()
    assert listed["status"] == "no_data" and listed["overdue"] is False


def test_sample_ids_request_and_model_restriction(client, tenant_a, auth_a) -> None:
    subject = unique_subject()
    seeded = seed(tenant_a, {subject: 4}, model_names=("m1", "m2"))
    chosen = seeded.samples[subject][:2]

    answer = client.post(
        URL, json={"sample_ids": chosen, "models": [seeded.models["m2"]], "method": "retrain"}, headers=auth_a
    )

    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["sample_count"] == 2 and body["method"] == "retrain"
    assert [m["model"] for m in body["models"]] == [seeded.models["m2"]]


def test_ccpa_request_is_due_in_45_days(client, tenant_a, auth_a) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 1})
    body = client.post(URL, json={"subject_id": subject, "regime": "ccpa"}, headers=auth_a).json()
    received = datetime.fromisoformat(body["received_at"])
    assert datetime.fromisoformat(body["due_at"]) == received + timedelta(days=45)
    assert body["days_left"] == 45


def test_gdpr_request_received_on_january_31_is_due_on_the_last_day_of_february(
    client, tenant_a, auth_a, monkeypatch
) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 1})
    monkeypatch.setattr(intake, "utcnow", lambda: _utc(2028, 1, 31, 15, 30))
    body = client.post(URL, json={"subject_id": subject}, headers=auth_a).json()
    assert body["due_at"].startswith("2028-02-29T15:30")


def test_a_request_touches_only_models_whose_live_versions_hold_the_data(client, tenant_a, auth_a) -> None:
    subject = unique_subject()
    seeded = seed(tenant_a, {subject: 2}, model_names=("m1", "m2"))
    with session_scope() as session:  # m2's only version was tainted by an earlier deletion
        session.execute(
            update(ModelVersion).where(ModelVersion.id == seeded.versions["m2"]).values(tainted=True)
        )
    body = client.post(URL, json={"subject_id": subject}, headers=auth_a).json()
    assert [m["model"] for m in body["models"]] == [seeded.models["m1"]]


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ({}, "neither subject_id nor sample_ids"),
        ({"subject_id": "a@b.c", "sample_ids": [1]}, "both"),
        ({"sample_ids": "abc"}, "wrong type"),
        ({"sample_ids": []}, "empty list"),
        ({"sample_ids": [0]}, "not positive"),
        ({"sample_ids": list(range(1, 10_002))}, "more than 10,000 samples"),
        ({"subject_id": 42}, "wrong type"),
        ({"subject_id": "   "}, "blank"),
        ({"subject_id": "a@b.c", "regime": "hipaa"}, "unknown regime"),
        ({"subject_id": "a@b.c", "method": "forget_harder"}, "unknown method"),
        ({"subject_id": "a@b.c", "subjectid": "x"}, "unknown field"),
        ({"subject_id": "a@b.c", "models": []}, "empty model list"),
    ],
)
def test_invalid_bodies_are_problems_and_change_nothing(client, tenant_a, auth_a, payload, why) -> None:
    answer = client.post(URL, json=payload, headers=auth_a)
    assert answer.status_code == 422, why
    assert answer.headers["content-type"].startswith(PROBLEM)
    assert answer.json()["status"] == 422 and answer.json()["errors"]
    assert _requests_of(tenant_a) == 0


def test_malformed_json_is_a_problem_and_changes_nothing(client, tenant_a, auth_a) -> None:
    answer = client.post(
        URL, content=b'{"subject_id": "a@b.c"', headers={**auth_a, "content-type": "application/json"}
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith(PROBLEM)
    assert answer.json()["errors"][0]["type"] == "json_invalid"
    assert _requests_of(tenant_a) == 0


def test_oversized_body_is_a_problem_and_changes_nothing(client, tenant_a, auth_a) -> None:
    too_many = get_settings().max_body_bytes // 8 + 10
    body = b'{"sample_ids": [' + b",".join([b"1234567"] * too_many) + b"]}"
    answer = client.post(URL, content=body, headers={**auth_a, "content-type": "application/json"})
    assert answer.status_code == 413 and answer.headers["content-type"].startswith(PROBLEM)
    assert _requests_of(tenant_a) == 0


def test_unknown_samples_and_models_are_refused(client, tenant_a, tenant_b, auth_a) -> None:
    theirs = seed(tenant_b, {unique_subject(): 1})
    mine = seed(tenant_a, {unique_subject(): 1})
    foreign_sample = next(iter(theirs.samples.values()))[0]

    answer = client.post(URL, json={"sample_ids": [foreign_sample]}, headers=auth_a)
    assert answer.status_code == 422 and str(foreign_sample) in answer.json()["detail"]
    answer = client.post(URL, json={"sample_ids": [2**60]}, headers=auth_a)
    assert answer.status_code == 422
    own_sample = next(iter(mine.samples.values()))[0]
    answer = client.post(
        URL, json={"sample_ids": [own_sample], "models": [theirs.models["m1"]]}, headers=auth_a
    )
    assert answer.status_code == 422 and "unknown models" in answer.json()["detail"]
    assert _requests_of(tenant_a) == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "ftp://example.com/x",
        "http://2130706433/x",
        "http://[2002:7f00:1::]/x",
        "http://1.1.1.1 /",
        "http://127.0.0.1\t.example.com/",
    ],
)
def test_callback_urls_to_private_hosts_are_refused(client, tenant_a, auth_a, url) -> None:
    answer = client.post(URL, json={"subject_id": unique_subject(), "callback_url": url}, headers=auth_a)
    assert answer.status_code == 422
    assert answer.json()["type"].endswith("callback-url-refused")
    assert _requests_of(tenant_a) == 0


def test_scopes_and_authentication(client, tenant_a, make_key) -> None:
    reader = make_key(tenant_a, ["requests:read"])
    writer = make_key(tenant_a, ["requests:write"])
    assert client.post(URL, json={"subject_id": unique_subject()}, headers=reader).status_code == 403
    created = client.post(URL, json={"subject_id": unique_subject()}, headers=writer)
    assert created.status_code == 202
    request_id = created.json()["id"]
    assert client.get(f"{URL}/{request_id}", headers=writer).status_code == 403
    assert client.get(URL, headers=writer).status_code == 403
    assert client.post(f"{URL}/{request_id}:cancel", headers=reader).status_code == 403
    assert client.get(f"{URL}/{request_id}", headers=reader).status_code == 200
    unauthenticated = client.get(f"{URL}/{request_id}")
    assert unauthenticated.status_code == 401 and unauthenticated.headers["content-type"].startswith(PROBLEM)


def test_another_tenants_request_is_not_found(client, tenant_a, auth_a, auth_b) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 1})
    request_id = client.post(URL, json={"subject_id": subject}, headers=auth_a).json()["id"]

    for answer in (
        client.get(f"{URL}/{request_id}", headers=auth_b),
        client.post(f"{URL}/{request_id}:cancel", headers=auth_b),
        client.post(f"{URL}/{request_id}:extend", json={"reason": "need more time"}, headers=auth_b),
    ):
        assert answer.status_code == 404 and answer.headers["content-type"].startswith(PROBLEM)
    assert all(item["id"] != request_id for item in client.get(URL, headers=auth_b).json()["items"])
    assert client.get(f"{URL}/{request_id}", headers=auth_a).json()["status"] == "resolved"
    assert client.get(f"{URL}/no-such-request", headers=auth_a).status_code == 404


# ---------------------------------------------------------------- life cycle and progress


def test_progress_verdict_promoted_version_and_certificate_link(client, tenant_a, auth_a) -> None:
    subject = unique_subject()
    seeded = seed(tenant_a, {subject: 2})
    body = client.post(URL, json={"subject_id": subject}, headers=auth_a).json()
    request_id = body["id"]

    with session_scope() as session:  # what the pipeline writes
        progress = session.scalars(
            select(DeletionRequestModel).where(DeletionRequestModel.request_id == request_id)
        ).one()
        job = Job(
            tenant_id=tenant_a,
            model_id=progress.model_id,
            kind="unlearn",
            stage="verifying",
            progress=80,
            method="nabla_tau",
            status="running",
            started_at=datetime.now(UTC),
        )
        session.add(job)
        session.flush()
        session.add(JobRequest(job_id=job.id, request_id=request_id))
        session.add(
            JobAttempt(job_id=job.id, method="nabla_tau", attempt=1, verdict="fail", outcome="escalated")
        )
        session.add(
            JobAttempt(job_id=job.id, method="retrain", attempt=2, verdict="pass", outcome="promoted")
        )
        new_version = ModelVersion(
            tenant_id=tenant_a,
            model_id=progress.model_id,
            version=2,
            parent_id=seeded.versions["m1"],
            status=VersionStatus.VERIFIED,
            training_root_id=seeded.versions["m1"],
        )
        session.add(new_version)
        session.flush()
        progress.job_id, progress.status = job.id, "completed"
        progress.from_version_id, progress.to_version_id = seeded.versions["m1"], new_version.id
        job_id = job.id
    _move(request_id, "queued", "unlearning", "verifying")

    running = client.get(f"{URL}/{request_id}", headers=auth_a).json()
    assert running["status"] == "verifying" and running["job_ids"] == [job_id]
    assert running["models"][0]["stage"] == "verifying" and running["models"][0]["progress"] == 80
    assert running["verdict"] == "pass"  # the last attempt decides
    assert running["certificate_url"] is None

    _move(request_id, "completed")
    done = client.get(f"{URL}/{request_id}", headers=auth_a).json()
    assert done["status"] == "completed" and done["completed_at"] is not None
    assert done["promoted_versions"] == {seeded.models["m1"]: 2}
    assert done["certificate_url"] == f"{URL}/{request_id}/certificate"
    assert [e["to_status"] for e in done["timeline"]] == [
        "received",
        "resolved",
        "queued",
        "unlearning",
        "verifying",
        "completed",
    ]
    assert done["days_left"] == body["days_left"]  # frozen at completion


def test_status_changes_follow_the_life_cycle(tenant_a, client, auth_a) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 1})
    request_id = client.post(URL, json={"subject_id": subject}, headers=auth_a).json()["id"]
    with session_scope() as session:
        request = session.get(DeletionRequest, request_id)
        assert lifecycle.change_status(session, request, "resolved", actor="worker") is None
        with pytest.raises(lifecycle.InvalidTransition):
            lifecycle.change_status(session, request, "verifying", actor="worker")
    _move(request_id, "failed", detail={"reason": "escalation chain spent"})
    failed = client.get(f"{URL}/{request_id}", headers=auth_a).json()
    assert failed["status"] == "failed" and failed["failure_reason"] == "escalation chain spent"
    assert _audit_of(request_id)[-1].action == "deletion_request.failed"


# ---------------------------------------------------------------- cancel


def test_cancel_before_unlearning(client, tenant_a, auth_a) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 1})
    request_id = client.post(URL, json={"subject_id": subject}, headers=auth_a).json()["id"]
    _move(request_id, "queued")

    answer = client.post(f"{URL}/{request_id}:cancel", json={"reason": "user withdrew"}, headers=auth_a)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "canceled" and body["models"][0]["status"] == "canceled"
    assert body["timeline"][-1] == {**body["timeline"][-1], "from_status": "queued", "to_status": "canceled"}
    event = _audit_of(request_id)[-1]
    assert event.action == "deletion_request.canceled" and event.data["reason"] == "user withdrew"
    again = client.post(f"{URL}/{request_id}:cancel", headers=auth_a)
    assert again.status_code == 200 and len(again.json()["timeline"]) == len(body["timeline"])


@pytest.mark.parametrize(
    "path", [("queued", "unlearning"), ("queued", "unlearning", "verifying", "completed")]
)
def test_cancel_after_unlearning_started_is_a_conflict(client, tenant_a, auth_a, path) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 1})
    request_id = client.post(URL, json={"subject_id": subject}, headers=auth_a).json()["id"]
    _move(request_id, *path)
    events_before = len(_audit_of(request_id))

    answer = client.post(f"{URL}/{request_id}:cancel", headers=auth_a)

    assert answer.status_code == 409 and answer.headers["content-type"].startswith(PROBLEM)
    assert client.get(f"{URL}/{request_id}", headers=auth_a).json()["status"] == path[-1]
    assert len(_audit_of(request_id)) == events_before


def test_no_data_request_cannot_be_canceled(client, tenant_a, auth_a) -> None:
    request_id = client.post(URL, json={"subject_id": unique_subject()}, headers=auth_a).json()["id"]
    assert client.post(f"{URL}/{request_id}:cancel", headers=auth_a).status_code == 409


# ---------------------------------------------------------------- extend


def test_gdpr_extension_defaults_to_the_maximum_then_is_exhausted(client, tenant_a, auth_a) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 1})
    created = client.post(URL, json={"subject_id": subject}, headers=auth_a).json()
    received = datetime.fromisoformat(created["received_at"])

    answer = client.post(f"{URL}/{created['id']}:extend", json={"reason": "complex request"}, headers=auth_a)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert datetime.fromisoformat(body["due_at"]) == add_months(received, 3)
    assert body["days_left"] == days_left(add_months(received, 3))
    assert body["extension"]["reason"] == "complex request"
    event = _audit_of(created["id"])[-1]
    assert event.action == "deletion_request.extended" and event.data["reason"] == "complex request"
    exhausted = client.post(f"{URL}/{created['id']}:extend", json={"reason": "again"}, headers=auth_a)
    assert exhausted.status_code == 409


def test_ccpa_extension_by_days_within_the_limit(client, tenant_a, auth_a) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 1})
    created = client.post(URL, json={"subject_id": subject, "regime": "ccpa"}, headers=auth_a).json()
    due = datetime.fromisoformat(created["due_at"])

    too_long = client.post(
        f"{URL}/{created['id']}:extend", json={"reason": "backlog", "days": 46}, headers=auth_a
    )
    assert too_long.status_code == 422 and "at most 45 more days" in too_long.json()["detail"]
    assert client.get(f"{URL}/{created['id']}", headers=auth_a).json()["due_at"] == created["due_at"]

    answer = client.post(
        f"{URL}/{created['id']}:extend", json={"reason": "backlog", "days": 10}, headers=auth_a
    )
    assert answer.status_code == 200
    assert datetime.fromisoformat(answer.json()["due_at"]) == due + timedelta(days=10)
    assert answer.json()["days_left"] == 55


@pytest.mark.parametrize("payload", [{}, {"reason": ""}, {"reason": "ok reason", "days": 0}, {"reason": 5}])
def test_extension_needs_a_reason_and_positive_days(client, tenant_a, auth_a, payload) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 1})
    created = client.post(URL, json={"subject_id": subject}, headers=auth_a).json()
    answer = client.post(f"{URL}/{created['id']}:extend", json=payload, headers=auth_a)
    assert answer.status_code == 422
    assert client.get(f"{URL}/{created['id']}", headers=auth_a).json()["due_at"] == created["due_at"]


def test_closed_request_cannot_be_extended(client, tenant_a, auth_a) -> None:
    request_id = client.post(URL, json={"subject_id": unique_subject()}, headers=auth_a).json()["id"]
    answer = client.post(f"{URL}/{request_id}:extend", json={"reason": "too late"}, headers=auth_a)
    assert answer.status_code == 409


# ---------------------------------------------------------------- lists


def test_list_filters_and_pagination(client, tenant_a, auth_a) -> None:
    subject_one, subject_two = unique_subject(), unique_subject()
    seeded = seed(tenant_a, {subject_one: 1}, model_names=("m1",))
    other = seed(tenant_a, {subject_two: 1}, model_names=("m2",))
    first = client.post(URL, json={"subject_id": subject_one}, headers=auth_a).json()
    second = client.post(URL, json={"subject_id": subject_two, "regime": "ccpa"}, headers=auth_a).json()
    empty = client.post(URL, json={"subject_id": unique_subject()}, headers=auth_a).json()
    with session_scope() as session:  # the first one is ten days late
        session.execute(
            update(DeletionRequest)
            .where(DeletionRequest.id == first["id"])
            .values(due_at=datetime.now(UTC) - timedelta(days=10))
        )

    def ids(query: str) -> list[str]:
        answer = client.get(f"{URL}?{query}", headers=auth_a)
        assert answer.status_code == 200, answer.text
        return [item["id"] for item in answer.json()["items"]]

    assert ids("") == [empty["id"], second["id"], first["id"]]  # newest first
    assert ids("status=no_data") == [empty["id"]]
    assert ids("status=no_data&status=resolved") == [empty["id"], second["id"], first["id"]]
    assert ids(f"model={seeded.models['m1']}") == [first["id"]]
    assert ids(f"model={other.models['m2']}") == [second["id"]]
    assert ids("overdue=true") == [first["id"]]
    overdue_item = client.get(f"{URL}?overdue=true", headers=auth_a).json()["items"][0]
    assert overdue_item["overdue"] is True and overdue_item["days_left"] == -10
    due_before = (datetime.now(UTC) + timedelta(days=40)).isoformat()
    assert ids(f"due_before={due_before.replace('+', '%2B')}") == [empty["id"], first["id"]]

    page_one = client.get(f"{URL}?limit=2", headers=auth_a).json()
    assert [item["id"] for item in page_one["items"]] == [empty["id"], second["id"]]
    page_two = client.get(f"{URL}?limit=2&cursor={page_one['next_cursor']}", headers=auth_a).json()
    assert [item["id"] for item in page_two["items"]] == [first["id"]] and page_two["next_cursor"] is None

    naive = (datetime.now(UTC) + timedelta(days=40)).replace(tzinfo=None).isoformat()
    assert ids(f"due_before={naive}") == [empty["id"], first["id"]]  # read as UTC
    assert client.get(f"{URL}?status=lost", headers=auth_a).status_code == 422
    assert client.get(f"{URL}?cursor=garbage", headers=auth_a).status_code == 422
    assert client.get(f"{URL}?due_before=soon", headers=auth_a).status_code == 422


def test_timeline_rows_match_audit_events(client, tenant_a, auth_a) -> None:
    subject = unique_subject()
    seed(tenant_a, {subject: 1})
    request_id = client.post(URL, json={"subject_id": subject}, headers=auth_a).json()["id"]
    _move(request_id, "queued", "unlearning")
    with session_scope() as session:
        timeline = [
            row.to_status
            for row in session.scalars(
                select(RequestEvent).where(RequestEvent.request_id == request_id).order_by(RequestEvent.id)
            )
        ]
    assert [f"deletion_request.{status}" for status in timeline] == [e.action for e in _audit_of(request_id)]
    assert timeline == ["received", "resolved", "queued", "unlearning"]
    assert RequestStatus.UNLEARNING.value == timeline[-1]
