"""Shapes of the webhook endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.webhooks.events import EventType
from app.webhooks.urls import MAX_URL_LENGTH


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH, description="http(s) URL on a public host.")
    events: list[EventType] = Field(min_length=1, max_length=len(EventType), description="`*` for all.")


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    events: list[str]
    active: bool
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="whsec_... key of the HMAC-SHA256 signatures (Standard Webhooks); answered only once."
    )


class WebhookPage(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None
