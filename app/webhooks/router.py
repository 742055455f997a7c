"""POST/GET/DELETE /v1/webhooks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from app.db import SessionDep
from app.idempotency.service import Idempotency, idempotent
from app.pagination import PageParamsDep, paginate
from app.security.auth import Principal, require_scope
from app.security.scopes import Scope
from app.webhooks import service
from app.webhooks.models import WebhookSubscription
from app.webhooks.schemas import WebhookCreate, WebhookCreated, WebhookOut, WebhookPage

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

Writer = Annotated[Principal, Depends(require_scope(Scope.REQUESTS_WRITE))]
Reader = Annotated[Principal, Depends(require_scope(Scope.REQUESTS_READ))]


@router.post("", status_code=201, response_model=WebhookCreated)
def create_webhook(
    body: WebhookCreate,
    idempotency: Annotated[Idempotency, Depends(idempotent(Scope.REQUESTS_WRITE))],
) -> WebhookCreated:
    """Subscribe a URL to events. The signing secret is in this answer only."""
    principal = idempotency.principal
    subscription = service.create_subscription(
        idempotency.session, principal.tenant_id, body.url, body.events, principal.actor
    )
    idempotency.session.flush()
    created = WebhookCreated(
        **WebhookOut.model_validate(subscription).model_dump(), secret=subscription.secret
    )
    return idempotency.finish(created, 201)


@router.get("", response_model=WebhookPage)
def list_webhooks(session: SessionDep, principal: Reader, page: PageParamsDep) -> WebhookPage:
    """The tenant's active subscriptions (without their secrets)."""
    items, next_cursor = paginate(
        session,
        service.active_subscriptions_stmt(principal.tenant_id),
        [WebhookSubscription.created_at, WebhookSubscription.id],
        page,
    )
    return WebhookPage(items=[WebhookOut.model_validate(item) for item in items], next_cursor=next_cursor)


@router.get("/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook_id: str, session: SessionDep, principal: Reader) -> WebhookOut:
    """One active subscription (without its secret)."""
    return WebhookOut.model_validate(service.get_subscription(session, principal.tenant_id, webhook_id))


@router.delete("/{webhook_id}", status_code=204, response_class=Response)
def delete_webhook(webhook_id: str, session: SessionDep, principal: Writer) -> Response:
    """Stop the subscription; deliveries not yet sent are dropped."""
    service.delete_subscription(session, principal.tenant_id, webhook_id, principal.actor)
    session.commit()
    return Response(status_code=204)
