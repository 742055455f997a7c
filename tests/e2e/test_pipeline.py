"""A deletion request travels the whole pipeline: real Postgres, real Redis, real worker processes.

Every test works on a model of its own (registered on the session's trained digits artifact) and forgets
subjects no other test forgets, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.certificates.signing import load_public_key
from app.certificates.signing import verify as verify_certificate
from app.db import session_scope
from app.jobs.models import Job, JobKind
from app.outbox.models import OutboxMessage
from app.provenance.models import Sample
from app.registry.models import Model
from app.requests.models import DeletionRequest, DeletionRequestSample
from app.security.subjects import subject_hmac
from app.webhooks.models import WebhookDelivery
from app.webhooks.signing import verify as verify_signature
from tests.e2e.client import (
    DIGITS_POLICY,
    FAST_GATE,
    DigitsSource,
    new_model,
    ok,
    upload_digits,
    wait_job,
    wait_request,
)
from tests.e2e.conftest import Workers, new_tenant_auth
from tests.e2e.stack import Api, RedisServer, WebhookReceiver, Worker, wait_for

pytestmark = pytest.mark.e2e


def delete_subject(http: httpx.Client, model: str, subject: str, **extra: Any) -> dict[str, Any]:
    body = {"subject_id": subject, "models": [model], **extra}
    return ok(
        http.post("/v1/deletion-requests", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}), 202
    )


def backdoor_subject(source: DigitsSource, index: int) -> str:
    """A training subject with a planted trigger: the gate has power on it."""
    return sorted(source.workload.backdoors)[index]


def plain_subject(source: DigitsSource, index: int) -> str:
    plain = sorted(set(source.workload.subjects) - set(source.workload.backdoors))
    return plain[index]


def unlearn_jobs(model_name: str) -> list[Job]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Job)
                .join(Model, Model.id == Job.model_id)
                .where(Model.name == model_name, Job.kind == JobKind.UNLEARN)
                .order_by(Job.created_at)
            )
        )


def versions(http: httpx.Client, model: str) -> list[dict[str, Any]]:
    return ok(http.get(f"/v1/models/{model}/versions"))["items"]


def job_of(http: httpx.Client, request_id: str) -> str | None:
    models = ok(http.get(f"/v1/deletion-requests/{request_id}"))["models"]
    return models[0]["job_id"] if models else None


def own_digits_model(http: httpx.Client, workload: Any, model: str) -> list[Any]:
    """A tenant's own digits dataset (30 training and 20 held-out subjects) and an empty model `model` with
    the fast gate; answers the training samples (nothing else in the tenant holds their subjects)."""
    trained = [s for s in workload.train if s.subject in set(workload.subjects[:30])]
    heldout = [s for s in workload.heldout if s.subject in set(workload.heldout_subjects[:20])]
    upload_digits(http, [*trained, *heldout])
    body = {"name": model, "task": "image-classification", "policy": {"gate": FAST_GATE}}
    ok(http.post("/v1/models", json=body))
    return trained


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


def test_request_reaches_completed_with_a_promoted_verified_version(
    http: httpx.Client, digits_source: DigitsSource
) -> None:
    model = new_model(http, digits_source)
    flaky = WebhookReceiver(failures=1)  # the ops subscriber's first delivery fails: it must be retried
    subscription = ok(http.post("/v1/webhooks", json={"url": flaky.url, "events": ["model.promoted"]}), 201)
    subject = backdoor_subject(digits_source, 0)
    created = delete_subject(http, model, subject)

    done = wait_request(http, created["id"])

    assert done["promoted_versions"] == {model: 2}
    assert done["verdict"] == "pass"
    promoted = ok(http.get(f"/v1/models/{model}/versions/2"))
    assert promoted["status"] == "verified" and promoted["promotable"]
    assert promoted["verification"]["verdict"] == "pass"
    assert promoted["training_set_size"] == len(digits_source.train_ids) - 20
    assert ok(http.get(f"/v1/models/{model}/aliases/production"))["version"] == 2
    served_before = ok(http.get(f"/v1/models/{model}/versions/1"))
    assert served_before["tainted"] and not served_before["promotable"]
    job = ok(http.get(f"/v1/jobs/{done['models'][0]['job_id']}"))
    assert job["status"] == "succeeded" and job["progress"] == 100 and job["stage"] == "done"
    report = ok(http.get(job["report_url"]))
    assert report["verdict"] == "pass" and report["samples"]["forget"] == 20
    assert http.get(f"{job['report_url']}/{report['plots'][0].removesuffix('.png')}.png").status_code == 200
    # provenance: the subject trained the (now tainted) version 1, never the promoted version 2
    held_in = {(v["model"], v["version"]) for v in ok(http.get(f"/v1/subjects/{subject}"))["model_versions"]}
    assert (model, 1) in held_in and (model, 2) not in held_in
    # the certificate the worker issued verifies against the service's published key
    certificate = http.get(f"/v1/deletion-requests/{created['id']}/certificate")
    public_key = load_public_key(http.get("/v1/certificates/public-key").content)
    assert certificate.status_code == 200 and verify_certificate(certificate.content, public_key).ok
    # ... and a worker signed the audit head that holds it into a checkpoint outside the database
    issued_at_seq = json.loads(certificate.content)["certificate"]["audit_head"]["seq"] + 1
    audit = wait_for(
        "the certificate's audit checkpoint",
        lambda: (
            (v := ok(http.get("/v1/audit/verify")))["checkpoint"]
            and v["checkpoint"]["seq"] >= issued_at_seq
            and v
        ),
        60,
    )
    assert audit["ok"] and audit["checkpoint"]["key_trusted"]
    # model.promoted reached the subscriber on the second attempt, signed, and both attempts are logged
    wait_for("the model.promoted delivery", lambda: len(flaky.received) >= 2, 60)
    headers, body = flaky.received[1]
    verify_signature(subscription["secret"], headers, body)
    event = flaky.events()[1]
    assert event["type"] == "model.promoted" and event["data"]["to_version"] == 2

    def recorded() -> tuple[str, int, int | None]:
        with session_scope() as session:
            delivery = session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.id == headers["webhook-id"])
            ).one()
            return delivery.status, delivery.attempts, delivery.last_status_code

    # The receiver saw the POST before the worker recorded its answer: wait for the record.
    wait_for("the delivery's record", lambda: recorded()[0] == "delivered", 30)
    assert recorded() == ("delivered", 2, 204)
    flaky.close()
    assert http.delete(f"/v1/webhooks/{subscription['id']}").status_code == 204


def test_after_promotion_content_is_erased_and_tainted_artifacts_purged(
    api: Api, workers: Workers, digits_source: DigitsSource, e2e_dir: Path
) -> None:
    # A tenant of its own: only its model holds the subject, so nothing else keeps the content alive.
    workload = digits_source.workload
    with httpx.Client(base_url=api.url, headers=new_tenant_auth(), timeout=30) as http:
        trained = own_digits_model(http, workload, "small")
        recipe = {"num_blocks": 5, "epochs": 4, "record_first_epoch_grads": False}
        job = ok(
            http.post(
                "/v1/models/small/versions:train",
                json={
                    "training_set": {"dataset": "digits", "external_ids": [s.sample_id for s in trained]},
                    "params": {"workload": "digits", "recipe": recipe},
                },
            )
        )
        wait_job(http, job["id"])
        ok(http.put("/v1/models/small/aliases/production", json={"version": 1}))
        first = ok(http.get("/v1/models/small/versions/1"))
        subject = workload.subjects[0]
        created = ok(http.post("/v1/deletion-requests", json={"subject_id": subject}), 202)
        assert wait_request(http, created["id"])["promoted_versions"] == {"small": 2}

        def forgotten_rows() -> list[Sample]:
            with session_scope() as session:
                return list(
                    session.scalars(
                        select(Sample)
                        .join(DeletionRequestSample, DeletionRequestSample.sample_id == Sample.id)
                        .where(DeletionRequestSample.request_id == created["id"])
                    )
                )

        wait_for("the subject's samples to be erased", lambda: all(r.erased_at for r in forgotten_rows()), 60)
        rows = forgotten_rows()
        assert len(rows) == sum(1 for s in trained if s.subject == subject)
        assert all(r.features is None and r.label is None and len(r.content_hash) == 64 for r in rows)
        purged = wait_for(
            "version 1 to be purged",
            lambda: (v := ok(http.get("/v1/models/small/versions/1")))["purged_at"] and v,
            60,
        )
        assert purged["tainted"]
        artifact = first["artifact_uri"].removeprefix("artifact://")
        assert not (e2e_dir / "artifacts" / "versions" / artifact).exists()
        record = e2e_dir / "artifacts" / "records" / artifact
        assert (record / "record.json").is_file() and not (record / "checkpoints").exists()


def test_worker_killed_mid_unlearning_completes_with_exactly_one_promotion(
    http: httpx.Client, digits_source: DigitsSource, gpu_worker: Worker
) -> None:
    model = new_model(http, digits_source)
    # retraining takes long enough to be caught in the middle
    created = delete_subject(http, model, backdoor_subject(digits_source, 2), method="retrain")

    def unlearning() -> str | None:
        job_id = job_of(http, created["id"])
        if job_id is None:
            return None
        job = ok(http.get(f"/v1/jobs/{job_id}"))
        return job_id if job["stage"] == "unlearning" and job["progress"] >= 15 else None

    job_id = wait_for("the job to be in the middle of unlearning", unlearning, 180, 0.2)
    gpu_worker.kill(signal.SIGKILL)
    stuck = ok(http.get(f"/v1/jobs/{job_id}"))
    assert stuck["status"] == "running" and stuck["stage"] == "unlearning"
    gpu_worker.start()

    done = wait_request(http, created["id"])
    job = wait_job(http, job_id)
    assert job["attempts"] == 2
    assert [a["method"] for a in job["method_attempts"]] == ["retrain"]
    history = ok(http.get(f"/v1/models/{model}/aliases/production/history"))["items"]
    promotions = [h for h in history if h["from_version"] is not None]
    assert len(promotions) == 1 and promotions[0]["to_version"] == done["promoted_versions"][model]
    assert [v["status"] for v in versions(http, model)].count("verified") == 1


def test_requests_sent_while_redis_is_down_are_all_processed(
    http: httpx.Client, digits_source: DigitsSource, redis_server: RedisServer
) -> None:
    model = new_model(http, digits_source)
    subjects = [plain_subject(digits_source, i) for i in (1, 2, 3)]
    redis_server.stop()
    try:
        created = [delete_subject(http, model, subject) for subject in subjects]
        with session_scope() as session:
            pending = session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.dispatched_at.is_(None), OutboxMessage.task_name == "lethe.plan"
                )
            ).all()
            planned = {request_id for row in pending for request_id in row.payload["request_ids"]}
            assert {c["id"] for c in created} <= planned
    finally:
        redis_server.start()

    for request in created:
        assert wait_request(http, request["id"])["status"] == "completed"
    jobs = unlearn_jobs(model)
    assert all(job.status == "succeeded" for job in jobs)
    assert len(jobs) <= 2  # coalesced: three requests in at most two batches


def test_same_idempotency_key_twice_makes_one_request_and_one_job(
    http: httpx.Client, digits_source: DigitsSource
) -> None:
    model = new_model(http, digits_source)
    subject = plain_subject(digits_source, 4)
    body = {"subject_id": subject, "models": [model]}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = http.post("/v1/deletion-requests", json=body, headers=key)
    second = http.post("/v1/deletion-requests", json=body, headers=key)
    assert first.status_code == second.status_code == 202
    assert second.headers.get("idempotent-replayed") == "true"
    assert first.json()["id"] == second.json()["id"]

    wait_request(http, first.json()["id"])
    assert len(unlearn_jobs(model)) == 1
    with session_scope() as session:
        count = session.scalar(
            select(func.count()).where(DeletionRequest.subject_hmac == subject_hmac(subject))
        )
    assert count == 1


def test_request_canceled_before_unlearning_never_unlearns(
    http: httpx.Client, digits_source: DigitsSource, gpu_worker: Worker
) -> None:
    model = new_model(http, digits_source)
    gpu_worker.stop()  # the batch is planned on the default queue; no GPU worker may claim it yet
    created = delete_subject(http, model, plain_subject(digits_source, 5))
    wait_for("the request to be queued", lambda: job_of(http, created["id"]), 60)
    canceled = ok(
        http.post(f"/v1/deletion-requests/{created['id']}:cancel", json={"reason": "user withdrew"})
    )
    assert canceled["status"] == "canceled"
    gpu_worker.start()

    job = wait_job(http, job_of(http, created["id"]) or "", statuses=("canceled",))
    assert job["method_attempts"] == [] and job["candidate_version"] is None
    assert [v["version"] for v in versions(http, model)] == [1]
    assert not ok(http.get(f"/v1/models/{model}/versions/1"))["tainted"]
    assert ok(http.get(f"/v1/models/{model}/aliases/production"))["version"] == 1


def test_gate_failure_escalates_and_the_audit_shows_each_attempt(
    http: httpx.Client, digits_source: DigitsSource
) -> None:
    # a plain fine-tune on the retain set keeps the subject's trigger: the gate must refuse it
    model = new_model(http, digits_source, {**DIGITS_POLICY, "chain": ["finetune", "deepobliviate"]})
    done = wait_request(http, delete_subject(http, model, backdoor_subject(digits_source, 3))["id"])

    job_id = done["models"][0]["job_id"]
    attempts = ok(http.get(f"/v1/jobs/{job_id}"))["method_attempts"]
    assert [(a["method"], a["outcome"]) for a in attempts] == [
        ("finetune", "rejected"),
        ("deepobliviate", "passed"),
    ]
    assert attempts[0]["verdict"] in ("fail", "inconclusive") and attempts[1]["verdict"] == "pass"
    audit = ok(http.get("/v1/audit", params={"entity_type": "job", "entity_id": job_id, "limit": 100}))[
        "items"
    ]
    finished = [e["data"] for e in audit if e["action"] == "job.attempt_finished"]
    assert [(e["method"], e["outcome"]) for e in finished] == [
        ("finetune", "rejected"),
        ("deepobliviate", "passed"),
    ]
    assert [e["data"]["to"] for e in audit if e["action"] == "job.escalated"] == ["deepobliviate"]
    rejected = [v for v in versions(http, model) if v["method"] == "finetune"]
    assert len(rejected) == 1 and rejected[0]["status"] == "rejected" and rejected[0]["tainted"]
    assert (
        ok(http.get(f"/v1/models/{model}/aliases/production"))["version"] == done["promoted_versions"][model]
    )


def test_a_spent_chain_fails_loudly_and_the_old_version_keeps_serving(
    http: httpx.Client, digits_source: DigitsSource, webhook_receiver: WebhookReceiver
) -> None:
    model = new_model(http, digits_source, {**DIGITS_POLICY, "chain": ["finetune"]})
    created = delete_subject(
        http, model, backdoor_subject(digits_source, 4), callback_url=webhook_receiver.url
    )

    failed = wait_request(http, created["id"], statuses=("failed",))

    assert "finetune" in failed["failure_reason"]
    assert ok(http.get(f"/v1/models/{model}/aliases/production"))["version"] == 1
    assert not ok(http.get(f"/v1/models/{model}/versions/1"))["tainted"]
    wait_for(
        "the request.failed callback",
        lambda: "request.failed" in [e["type"] for e in webhook_receiver.events()],
        30,
    )
    headers, body = webhook_receiver.received[
        [e["type"] for e in webhook_receiver.events()].index("request.failed")
    ]
    verify_signature(created["callback_secret"], headers, body)
    metrics = http.get("/metrics").text
    assert any(
        line.startswith("lethe_deletion_requests_failed") and not line.endswith(" 0.0")
        for line in metrics.splitlines()
    )


def test_a_model_trained_in_shards_forgets_by_retraining_one_shard(
    api: Api, workers: Workers, digits_source: DigitsSource, e2e_dir: Path
) -> None:
    """layout {shards, slices} at training time; each deletion then runs sisa, and its version can be
    unlearned by sisa again; the purge of a tainted version removes its members' checkpoints too."""
    workload = digits_source.workload
    with httpx.Client(base_url=api.url, headers=new_tenant_auth(), timeout=30) as http:
        trained = own_digits_model(http, workload, "sharded")
        training_set = {"dataset": "digits", "external_ids": [s.sample_id for s in trained]}
        sharded = {"workload": "digits", "layout": {"shards": 3, "slices": 4}}

        def train(recipe: dict[str, Any]) -> httpx.Response:
            body = {"training_set": training_set, "params": {**sharded, "recipe": recipe}}
            return http.post("/v1/models/sharded/versions:train", json=body)

        refused = train({"num_blocks": 4})  # the slices given twice
        assert refused.status_code == 422 and "slices" in refused.text
        job = ok(train({"epochs": 4}))
        wait_job(http, job["id"])
        ok(http.put("/v1/models/sharded/aliases/production", json={"version": 1}))
        first = ok(http.get("/v1/models/sharded/versions/1"))
        for version, subject in ((2, workload.subjects[1]), (3, workload.subjects[2])):
            created = ok(http.post("/v1/deletion-requests", json={"subject_id": subject}), 202)
            assert wait_request(http, created["id"])["promoted_versions"] == {"sharded": version}
            assert ok(http.get(f"/v1/models/sharded/versions/{version}"))["method"] == "sisa"
        artifact = first["artifact_uri"].removeprefix("artifact://")
        record = e2e_dir / "artifacts" / "records" / artifact
        wait_for(
            "version 1 to be purged", lambda: ok(http.get("/v1/models/sharded/versions/1"))["purged_at"], 60
        )
        assert (record / "record.json").is_file()
        members = sorted((record / "shards").iterdir())
        assert len(members) == 3 and not any((m / "checkpoints").exists() for m in members)
