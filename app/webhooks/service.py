"""Webhook subscriptions, and the deliveries that events queue for them.

`enqueue_event` runs in the caller's transaction: one delivery row per matching subscriber (and one for
the request's own callback URL), each with an outbox task `lethe.deliver_webhook`, so deliveries exist
exactly when the change they announce was committed. Bulk writers build the same rows (`delivery_rows`,
`delivery_tasks`) from subscriptions they looked up themselves (`subscriptions_query`). The worker signs
and POSTs them (Standard Webhooks: the delivery id is the webhook-id, stable across retries).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import String, bindparam, insert, select
from sqlalchemy.orm import Session

from app.asyncdb import compiled_sql
from app.audit.service import record
from app.db import new_id, utcnow
from app.errors import not_found, unprocessable
from app.outbox.celery_client import DELIVER_WEBHOOK_TASK
from app.outbox.service import enqueue_rows, outbox_row
from app.settings import get_settings
from app.webhooks.events import EventType
from app.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSubscription
from app.webhooks.signing import derived_secret, encode_body, new_secret, signed_headers
from app.webhooks.urls import CallbackURLError, validate_callback_url


def checked_url(url: str) -> str:
    """The URL when Lethe may call it (public address unless allowed by settings), else 422."""
    try:
        return validate_callback_url(url, allow_private=get_settings().allow_private_callbacks)
    except CallbackURLError as exc:
        raise unprocessable(f"url refused: {exc}", "callback-url-refused") from exc


def callback_secret(request_id: str) -> str:
    """The signing secret of a request's callback deliveries: derived, so it needs no storage."""
    return derived_secret(get_settings().secret_key.get_secret_value(), f"callback:{request_id}")


def create_subscription(
    session: Session, tenant_id: str, url: str, events: list[EventType], actor: str
) -> WebhookSubscription:
    subscription = WebhookSubscription(
        id=new_id(),
        tenant_id=tenant_id,
        url=checked_url(url),
        events=list(dict.fromkeys(event.value for event in events)),
        secret=new_secret(),
        active=True,
    )
    session.add(subscription)
    record(
        session,
        tenant_id,
        "webhook_subscription",
        subscription.id,
        "webhook_subscription.created",
        {"url": subscription.url, "events": subscription.events},
        actor,
    )
    return subscription


def get_subscription(session: Session, tenant_id: str, subscription_id: str) -> WebhookSubscription:
    subscription = session.get(WebhookSubscription, subscription_id)
    if subscription is None or subscription.tenant_id != tenant_id or not subscription.active:
        raise not_found("webhook", subscription_id)
    return subscription


def active_subscriptions_stmt(tenant_id: Any) -> Any:
    return select(WebhookSubscription).where(
        WebhookSubscription.tenant_id == tenant_id, WebhookSubscription.active.is_(True)
    )


@dataclass(frozen=True)
class SubscriptionRow:
    id: str
    url: str
    events: list[str]


def subscriptions_query(tenant_id: Any) -> Any:
    """A tenant's active subscriptions as rows of SubscriptionRow (`tenant_id` a value or a bindparam)."""
    return active_subscriptions_stmt(tenant_id).with_only_columns(
        WebhookSubscription.id, WebhookSubscription.url, WebhookSubscription.events
    )


def active_subscriptions(session: Session, tenant_id: str) -> list[SubscriptionRow]:
    return [SubscriptionRow(*row) for row in session.execute(subscriptions_query(tenant_id))]


def delete_subscription(session: Session, tenant_id: str, subscription_id: str, actor: str) -> None:
    """Deactivate (the row stays: its pending deliveries still need the secret to be told apart)."""
    subscription = get_subscription(session, tenant_id, subscription_id)
    subscription.active = False
    record(
        session,
        tenant_id,
        "webhook_subscription",
        subscription.id,
        "webhook_subscription.deleted",
        {"url": subscription.url},
        actor,
    )


class SubscriptionTarget(Protocol):
    id: str
    url: str
    events: list[str]


def _wants(subscription: SubscriptionTarget, event_type: str) -> bool:
    return event_type in subscription.events or EventType.ALL in subscription.events


def event_envelope(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The body every receiver gets for an event."""
    return {"type": event_type, "timestamp": utcnow().isoformat(), "data": payload}


def delivery_targets(
    subscriptions: Iterable[SubscriptionTarget], event_type: str, callback_url: str | None
) -> list[tuple[str | None, str]]:
    """(subscription id or None for the callback, url) of everyone `event_type` goes to, given the
    tenant's active subscriptions."""
    targets: list[tuple[str | None, str]] = [
        (subscription.id, subscription.url)
        for subscription in subscriptions
        if _wants(subscription, event_type)
    ]
    if callback_url:
        targets.append((None, callback_url))
    return targets


def enqueue_event(
    session: Session,
    tenant_id: str,
    event_type: str,
    payload: dict[str, Any],
    callback_url: str | None = None,
    request_id: str | None = None,
) -> list[dict[str, Any]]:
    """Queue `event_type` for the tenant's subscribers (and `callback_url`, signed with the secret of
    `request_id`) in the caller's transaction; answers the deliveries' rows."""
    targets = delivery_targets(active_subscriptions(session, tenant_id), event_type, callback_url)
    now = utcnow()
    deliveries = delivery_rows(
        tenant_id, event_type, event_envelope(event_type, payload), targets, request_id, now
    )
    write_deliveries(session, deliveries, now)
    return deliveries


def write_deliveries(session: Session, deliveries: list[dict[str, Any]], now: datetime) -> None:
    """Insert deliveries (delivery_rows) and their outbox tasks in the caller's transaction."""
    if deliveries:
        session.execute(insert(WebhookDelivery.__table__), deliveries)
        enqueue_rows(session, delivery_tasks(deliveries, now))


@lru_cache(maxsize=1)
def active_subscriptions_sql() -> str:
    """subscriptions_query for app.asyncdb (parameter tenant_id)."""
    return compiled_sql(subscriptions_query(bindparam("tenant_id", type_=String)))


# The columns of WebhookDelivery that delivery_rows fills.
DELIVERY_COLUMNS = (
    "id", "tenant_id", "subscription_id", "request_id", "url", "event_type", "payload", "status", "attempts",
    "next_attempt_at", "created_at",
)  # fmt: skip


def delivery_rows(
    tenant_id: str,
    event_type: str,
    envelope: dict[str, Any],
    targets: Iterable[tuple[str | None, str]],
    request_id: str | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The deliveries of an event to `targets`, as rows of DELIVERY_COLUMNS; each needs its outbox task
    (delivery_tasks)."""
    return [
        {
            "id": new_id(),
            "tenant_id": tenant_id,
            "subscription_id": subscription_id,
            "request_id": request_id if subscription_id is None else None,
            "url": url,
            "event_type": event_type,
            "payload": envelope,
            "status": DeliveryStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for subscription_id, url in targets
    ]


def delivery_tasks(deliveries: Iterable[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The outbox rows of the tasks that send `deliveries` (delivery_rows)."""
    return [outbox_row(DELIVER_WEBHOOK_TASK, {"delivery_id": row["id"]}, now) for row in deliveries]


def delivery_secret(session: Session, delivery: WebhookDelivery) -> str | None:
    """The secret that signs `delivery`; None when its subscription was deleted (do not deliver)."""
    if delivery.subscription_id is not None:
        subscription = session.get(WebhookSubscription, delivery.subscription_id)
        return subscription.secret if subscription is not None and subscription.active else None
    if delivery.request_id is not None:
        return callback_secret(delivery.request_id)
    return None


def delivery_request(session: Session, delivery: WebhookDelivery) -> tuple[bytes, dict[str, str]] | None:
    """What the deliverer POSTs: the body and its signed headers (None: nothing may be sent)."""
    secret = delivery_secret(session, delivery)
    if secret is None:
        return None
    body = encode_body(delivery.payload)
    return body, signed_headers(secret, delivery.id, body)
