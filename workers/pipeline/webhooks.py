"""Webhook delivery: sign, POST, and record every attempt in the delivery's row; retry with backoff.

The row is locked (SKIP LOCKED) while its POST is in flight, so a duplicate task for the same delivery
does nothing. The target's host is resolved right before each POST, once, and the POST goes to the
addresses that were checked (app.webhooks.delivery): a name that now points to a private or loopback
address is refused (unless settings allow private callbacks). A failed attempt sets
`next_attempt_at` (webhook_backoff_seconds, doubling); the sweeper sends the retry when it is due; after
`webhook_max_attempts` the delivery is `failed`. Redirects are not followed (they could lead anywhere).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select

from app.db import get_session_factory, utcnow
from app.settings import get_settings
from app.webhooks.delivery import post_checked
from app.webhooks.models import DeliveryStatus, WebhookDelivery
from app.webhooks.service import delivery_request
from workers.pipeline.leases import for_update

log = logging.getLogger("lethe.webhooks")

MAX_ERROR_CHARS = 500


def backoff(attempts: int) -> timedelta:
    """Delay before the next attempt after `attempts` failed ones."""
    return timedelta(seconds=get_settings().webhook_backoff_seconds * 2 ** max(0, attempts - 1))


def deliver(delivery_id: str) -> str | None:
    """One delivery attempt; answers the delivery's status afterwards (None when it was not ours to send)."""
    settings = get_settings()
    with get_session_factory()() as session, session.begin():
        delivery = session.scalars(
            for_update(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id), skip_locked=True)
        ).one_or_none()
        if delivery is None or delivery.status != DeliveryStatus.PENDING:
            return None
        prepared = delivery_request(session, delivery)
        delivery.attempts += 1
        if prepared is None:
            _give_up(delivery, "the subscription was deleted")
            return delivery.status
        body, headers = prepared
        attempt = post_checked(
            delivery.url,
            body,
            headers,
            allow_private=settings.allow_private_callbacks,
            timeout=settings.webhook_timeout_seconds,
        )
        status_code, error = attempt.status_code, attempt.error
        delivery.last_status_code = status_code
        if attempt.delivered:
            delivery.status = DeliveryStatus.DELIVERED
            delivery.delivered_at = utcnow()
            delivery.last_error = None
            delivery.next_attempt_at = None
        elif delivery.attempts >= settings.webhook_max_attempts:
            _give_up(delivery, error or f"HTTP {status_code}")
        else:
            delivery.last_error = (error or f"HTTP {status_code}")[:MAX_ERROR_CHARS]
            delivery.next_attempt_at = utcnow() + backoff(delivery.attempts)
        log.info(
            "webhook %s %s to %s: attempt %d -> %s (%s)",
            delivery.id, delivery.event_type, delivery.url, delivery.attempts, delivery.status,
            status_code if status_code is not None else delivery.last_error,
        )  # fmt: skip
        return delivery.status


def _give_up(delivery: WebhookDelivery, why: str) -> None:
    delivery.status = DeliveryStatus.FAILED
    delivery.last_error = why[:MAX_ERROR_CHARS]
    delivery.next_attempt_at = None
    log.error("webhook %s to %s failed for good: %s", delivery.id, delivery.url, why)
