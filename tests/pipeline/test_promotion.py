"""Promotion on the real database: a verified candidate starts serving exactly once however often the task
is delivered, and a candidate whose served version moved meanwhile is refused and unlearned again."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from app.db import session_scope, utcnow
from app.jobs.models import Job, JobKind, JobStatus
from app.outbox.models import OutboxMessage
from app.registry.models import Alias, AliasHistory, Model, ModelVersion, VersionStatus
from app.webhooks.models import WebhookDelivery, WebhookSubscription
from workers.pipeline.promote import run_promote
from workers.pipeline.stages import Stage


@dataclass
class Promotion:
    job_id: str
    model_id: str
    alias_id: str
    served_id: str
    candidate_id: str


@pytest.fixture
def promotion(make_tenant: Callable[[], str]) -> Callable[[], Promotion]:
    """A job at its promoting stage: alias `production` serves version 1, version 2 is its verified
    candidate; the tenant subscribes to model.promoted."""

    def factory() -> Promotion:
        tenant_id = make_tenant()
        with session_scope() as session:
            model = Model(tenant_id=tenant_id, name=f"m-{uuid.uuid4().hex[:6]}", task="image-classification")
            session.add(model)
            session.flush()
            served = ModelVersion(
                tenant_id=tenant_id, model_id=model.id, version=1, status=VersionStatus.REGISTERED
            )
            candidate = ModelVersion(
                tenant_id=tenant_id,
                model_id=model.id,
                version=2,
                status=VersionStatus.VERIFIED,
                method="retrain",
            )
            session.add_all([served, candidate])
            session.flush()
            candidate.parent_id = served.id
            alias = Alias(tenant_id=tenant_id, model_id=model.id, name="production", version_id=served.id)
            subscription = WebhookSubscription(
                tenant_id=tenant_id,
                url="https://ops.example.com/hook",
                events=["model.promoted"],
                secret="whsec_x",
            )
            job = Job(
                tenant_id=tenant_id,
                model_id=model.id,
                kind=JobKind.UNLEARN,
                status=JobStatus.RUNNING,
                stage=Stage.PROMOTING,
                attempts=1,
                candidate_version_id=candidate.id,
                lease_expires_at=utcnow(),
                params={
                    "alias": "production",
                    "alias_version": 1,
                    "base_version_id": served.id,
                    "base_version": 1,
                    "chain": ["retrain"],
                    "chain_index": 0,
                },
            )
            session.add_all([alias, subscription, job])
            session.flush()
            return Promotion(job.id, model.id, alias.id, served.id, candidate.id)

    return factory


def history_count(alias_id: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).where(AliasHistory.alias_id == alias_id)) or 0


def test_a_redelivered_promotion_promotes_once(promotion: Callable[[], Promotion]) -> None:
    case = promotion()

    run_promote(case.job_id)
    run_promote(case.job_id)  # the broker delivered the task twice

    with session_scope() as session:
        alias = session.get(Alias, case.alias_id)
        job = session.get(Job, case.job_id)
        assert alias is not None and alias.version_id == case.candidate_id
        assert job is not None and job.status == JobStatus.SUCCEEDED and job.stage == Stage.DONE
        promoted_events = session.scalar(
            select(func.count()).where(
                WebhookDelivery.event_type == "model.promoted",
                WebhookDelivery.payload["data"]["job_id"].as_string() == case.job_id,
            )
        )
        assert promoted_events == 1
    assert history_count(case.alias_id) == 1


def test_a_candidate_whose_served_version_moved_is_refused_and_unlearned_again(
    promotion: Callable[[], Promotion],
) -> None:
    case = promotion()
    with session_scope() as session:  # ops pointed the alias elsewhere while the job verified
        model = session.get(Model, case.model_id)
        assert model is not None
        other = ModelVersion(
            tenant_id=model.tenant_id, model_id=model.id, version=3, status=VersionStatus.REGISTERED
        )
        session.add(other)
        session.flush()
        alias = session.get(Alias, case.alias_id)
        assert alias is not None
        alias.version_id = other.id
        other_id = other.id

    run_promote(case.job_id)

    with session_scope() as session:
        alias = session.get(Alias, case.alias_id)
        candidate = session.get(ModelVersion, case.candidate_id)
        job = session.get(Job, case.job_id)
        assert alias is not None and alias.version_id == other_id
        assert candidate is not None and candidate.status == VersionStatus.REJECTED
        assert job is not None and job.status == JobStatus.RUNNING and job.stage == Stage.UNLEARNING
        assert "base_version_id" not in job.params and job.candidate_version_id is None
        resent = session.scalars(
            select(OutboxMessage).where(OutboxMessage.task_name == "lethe.unlearn")
        ).all()
        assert case.job_id in [row.payload.get("job_id") for row in resent]
    assert history_count(case.alias_id) == 0
