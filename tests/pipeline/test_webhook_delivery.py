"""Webhook delivery without a network: a target that resolves to a private address is refused at delivery
time (the host is checked again before each POST), retried with backoff, and failed after the last try."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.db import session_scope, utcnow
from app.settings import get_settings
from app.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSubscription
from workers.pipeline.webhooks import deliver


@pytest.fixture
def delivery_to(make_tenant: Callable[[], str]) -> Callable[[str], str]:
    def factory(url: str) -> str:
        tenant_id = make_tenant()
        with session_scope() as session:
            subscription = WebhookSubscription(
                tenant_id=tenant_id, url=url, events=["model.promoted"], secret="whsec_" + "A" * 43 + "="
            )
            session.add(subscription)
            session.flush()
            delivery = WebhookDelivery(
                tenant_id=tenant_id,
                subscription_id=subscription.id,
                url=url,
                event_type="model.promoted",
                payload={"type": "model.promoted", "data": {}},
                status=DeliveryStatus.PENDING,
                attempts=0,
                next_attempt_at=utcnow(),
            )
            session.add(delivery)
            session.flush()
            return delivery.id

    return factory


def test_a_private_target_is_refused_retried_with_backoff_then_failed(
    delivery_to: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings()
    monkeypatch.setattr(settings, "allow_private_callbacks", False)
    monkeypatch.setattr(settings, "webhook_max_attempts", 2)
    delivery_id = delivery_to("http://127.0.0.1:9/hook")

    assert deliver(delivery_id) == DeliveryStatus.PENDING
    with session_scope() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None and row.attempts == 1 and (row.last_error or "").startswith("refused")
        assert row.next_attempt_at is not None and row.next_attempt_at > utcnow()

    assert deliver(delivery_id) == DeliveryStatus.FAILED
    assert deliver(delivery_id) is None  # a finished delivery is never sent again
    with session_scope() as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None and row.attempts == 2 and row.delivered_at is None
