"""Webhooks: signing (Standard Webhooks), callback URL checks, subscriptions, deliveries queued in the
transaction of the change they announce."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.outbox.models import OutboxMessage
from app.requests import lifecycle
from app.requests.models import DeletionRequest
from app.webhooks.models import WebhookDelivery
from app.webhooks.service import delivery_request
from app.webhooks.signing import SignatureError, new_secret, signature, signed_headers, verify
from app.webhooks.urls import CallbackURLError, validate_callback_url
from tests.api.seeding import seed, unique_subject

URL = "/v1/webhooks"
PUBLIC_HOOK = "https://hooks.example.com/lethe"

# ---------------------------------------------------------------- signing (pure)


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The example of the Standard Webhooks specification.
    assert (
        signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_receiver_accepts_genuine_deliveries_and_rejects_tampering() -> None:
    secret = new_secret()
    body = b'{"type":"request.completed"}'
    headers = signed_headers(secret, "d-1", body, timestamp=1_700_000_000)
    verify(secret, headers, body, now=1_700_000_100)
    with pytest.raises(SignatureError):
        verify(secret, headers, body + b" ", now=1_700_000_100)
    with pytest.raises(SignatureError):
        verify(new_secret(), headers, body, now=1_700_000_100)
    with pytest.raises(SignatureError):
        verify(secret, {**headers, "webhook-id": "d-2"}, body, now=1_700_000_100)
    with pytest.raises(SignatureError, match="tolerance"):
        verify(secret, headers, body, now=1_700_000_000 + 3600)
    with pytest.raises(SignatureError):
        verify(secret, {k: v for k, v in headers.items() if k != "webhook-signature"}, body)


# ---------------------------------------------------------------- callback URLs (pure)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://127.1/x",
        "http://2130706433/x",
        "http://0x7f000001/x",
        "http://0.0.0.0/x",
        "http://localhost/x",
        "http://api.localhost/x",
        "http://printer.local/x",
        "http://metadata.google.internal/x",
        "http://redis:6379/x",
        "http://10.0.0.8/x",
        "http://172.16.5.4/x",
        "http://192.168.1.1/x",
        "http://100.64.0.1/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://[fe80::1]/x",
        "http://[fd00::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://224.0.0.1/x",
        "http://240.0.0.1/x",
        "http://[ff02::1]/x",
        "http://[fec0::1]/x",
    ],
)
def test_private_loopback_and_link_local_targets_are_refused(url: str) -> None:
    with pytest.raises(CallbackURLError):
        validate_callback_url(url, allow_private=False)
    assert validate_callback_url(url, allow_private=True) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://[::ffff:8.8.8.8]/x",  # IPv4-mapped
        "http://[::127.0.0.1]/x",  # IPv4-compatible
        "http://[::8.8.8.8]/x",
        "http://[::ffff:0:7f00:1]/x",  # IPv4-translated (SIIT)
        "http://[64:ff9b::a00:1]/x",  # NAT64 well-known prefix (10.0.0.1)
        "http://[64:ff9b::808:808]/x",  # ... even around a public address (8.8.8.8)
        "http://[64:ff9b:1::a00:1]/x",  # NAT64 local-use prefix
        "http://[2002:7f00:1::]/x",  # 6to4 (127.0.0.1)
        "http://[2002:808:808::1]/x",
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x",  # Teredo
        "http://[2001:4860:1::5efe:a00:1]/x",  # ISATAP interface id (10.0.0.1) under a global prefix
        "http://[2001:4860:1:0:200:5efe:808:808]/x",
    ],
)
def test_every_ipv6_form_with_an_embedded_ipv4_address_is_refused(url: str) -> None:
    with pytest.raises(CallbackURLError, match="private, loopback"):
        validate_callback_url(url, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "http://1.1.1.1 /",
        "http://127.0.0.1\t.example.com/",
        " https://hooks.example.com/x",
        "https://hooks.example.com/x\n",
        "https://hooks.example.com/\u0000",
        "https://hooks.example.com\\@127.0.0.1/",
        "https://bücher.example/x",
        "https://%31%32%37.0.0.1/x",
        "https://[fe80::1%25eth0]/x",
        "https://[not-an-address]/x",
        "https://exa mple.com/x",
        "https://-bad-.example.com/x",
        "https://hooks.example.com@evil.example.com/x",
        "//hooks.example.com/x",
        "hooks.example.com/x",
        "file:///etc/passwd",
        "https:///nohost",
        "https://user:pw@example.com/x",
        "https://example.com:0/x",
        "https://example.com:99999/x",
        "javascript:alert(1)",
    ],
)
def test_malformed_urls_are_refused_even_when_private_targets_are_allowed(url: str) -> None:
    with pytest.raises(CallbackURLError):
        validate_callback_url(url, allow_private=True)


@pytest.mark.parametrize("url", [PUBLIC_HOOK, "http://8.8.8.8/hook", "https://[2001:4860:4860::8888]/hook"])
def test_public_targets_are_accepted(url: str) -> None:
    assert validate_callback_url(url, allow_private=False) == url


# ---------------------------------------------------------------- subscriptions


def test_subscribe_list_and_delete(client, tenant_a, auth_a) -> None:
    created = client.post(
        URL, json={"url": PUBLIC_HOOK, "events": ["request.completed", "model.promoted"]}, headers=auth_a
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["active"] is True
    assert body["events"] == ["request.completed", "model.promoted"]

    listed = client.get(URL, headers=auth_a).json()
    assert [item["id"] for item in listed["items"]] == [body["id"]]
    assert (
        "secret" not in listed["items"][0]
        and "secret" not in client.get(f"{URL}/{body['id']}", headers=auth_a).json()
    )

    assert client.delete(f"{URL}/{body['id']}", headers=auth_a).status_code == 204
    assert client.get(f"{URL}/{body['id']}", headers=auth_a).status_code == 404
    assert client.delete(f"{URL}/{body['id']}", headers=auth_a).status_code == 404
    assert client.get(URL, headers=auth_a).json()["items"] == []


@pytest.mark.parametrize(
    "payload",
    [
        {"url": PUBLIC_HOOK, "events": ["request.exploded"]},
        {"url": PUBLIC_HOOK, "events": []},
        {"url": PUBLIC_HOOK},
        {"url": "http://127.0.0.1:9000/hook", "events": ["*"]},
        {"url": "http://[64:ff9b::a00:1]/hook", "events": ["*"]},
        {"url": "http://1.1.1.1 /", "events": ["*"]},
        {"url": "http://127.0.0.1\t.example.com/", "events": ["*"]},
        {"url": 12, "events": ["*"]},
        {"url": PUBLIC_HOOK, "events": "request.completed"},
    ],
)
def test_bad_subscriptions_are_problems_and_change_nothing(client, tenant_a, auth_a, payload) -> None:
    answer = client.post(URL, json=payload, headers=auth_a)
    assert answer.status_code == 422 and answer.headers["content-type"].startswith("application/problem+json")
    assert client.get(URL, headers=auth_a).json()["items"] == []


def test_subscriptions_are_per_tenant_and_scoped(client, tenant_a, auth_a, auth_b, make_key) -> None:
    webhook_id = client.post(URL, json={"url": PUBLIC_HOOK, "events": ["*"]}, headers=auth_a).json()["id"]
    assert client.get(f"{URL}/{webhook_id}", headers=auth_b).status_code == 404
    assert client.delete(f"{URL}/{webhook_id}", headers=auth_b).status_code == 404
    assert client.get(URL, headers=auth_b).json()["items"] == []
    reader = make_key(tenant_a, ["requests:read"])
    assert client.post(URL, json={"url": PUBLIC_HOOK, "events": ["*"]}, headers=reader).status_code == 403
    assert client.delete(f"{URL}/{webhook_id}", headers=reader).status_code == 403
    assert client.get(f"{URL}/{webhook_id}", headers=auth_a).status_code == 200


# ---------------------------------------------------------------- deliveries


def _deliveries(request_id: str | None = None, tenant_id: str | None = None) -> list[WebhookDelivery]:
    with session_scope() as session:
        stmt = select(WebhookDelivery).order_by(WebhookDelivery.created_at)
        if tenant_id:
            stmt = stmt.where(WebhookDelivery.tenant_id == tenant_id)
        rows = list(session.scalars(stmt))
    return [row for row in rows if request_id is None or row.payload["data"].get("id") == request_id]


def test_status_changes_queue_signed_deliveries_for_subscribers_and_the_callback(
    client, tenant_a, auth_a
) -> None:
    resolved_hook = client.post(
        URL, json={"url": PUBLIC_HOOK, "events": ["request.resolved"]}, headers=auth_a
    ).json()
    completed_hook = client.post(
        URL, json={"url": "https://ops.example.org/h", "events": ["request.completed"]}, headers=auth_a
    ).json()
    subject = unique_subject()
    seed(tenant_a, {subject: 1})

    created = client.post(
        "/v1/deletion-requests",
        json={"subject_id": subject, "callback_url": "https://app.example.net/cb"},
        headers=auth_a,
    )

    assert created.status_code == 202
    request = created.json()
    assert request["callback_secret"].startswith("whsec_")
    assert (
        "callback_secret" not in client.get(f"/v1/deletion-requests/{request['id']}", headers=auth_a).json()
    )
    deliveries = _deliveries(request["id"])
    assert sorted((d.url, d.event_type) for d in deliveries) == [
        ("https://app.example.net/cb", "request.resolved"),
        (PUBLIC_HOOK, "request.resolved"),
    ]
    with session_scope() as session:
        tasks = {
            row.payload["delivery_id"]
            for row in session.scalars(
                select(OutboxMessage).where(OutboxMessage.task_name == "lethe.deliver_webhook")
            )
        }
        assert {d.id for d in deliveries} <= tasks
        for delivery in deliveries:
            body, headers = delivery_request(session, delivery)
            secret = resolved_hook["secret"] if delivery.subscription_id else request["callback_secret"]
            verify(secret, headers, body)  # what each receiver does
            assert headers["webhook-id"] == delivery.id
            sent = json.loads(body)
            assert sent["type"] == "request.resolved" and sent["data"]["status"] == "resolved"
            assert subject not in body.decode()

    with session_scope() as session:
        stored = session.get(DeletionRequest, request["id"])
        for status in ("queued", "unlearning", "verifying", "completed"):
            lifecycle.change_status(session, stored, status, actor="worker")
    by_url = {}
    for delivery in _deliveries(request["id"]):
        by_url.setdefault(delivery.url, []).append(delivery.event_type)
    assert by_url["https://app.example.net/cb"] == [
        "request.resolved",
        "request.queued",
        "request.unlearning",
        "request.verifying",
        "request.completed",
    ]
    assert by_url[PUBLIC_HOOK] == ["request.resolved"]
    assert by_url["https://ops.example.org/h"] == ["request.completed"]
    assert completed_hook["id"] in {d.subscription_id for d in _deliveries(request["id"])}


def test_deleted_subscriptions_receive_nothing_more(client, tenant_a, auth_a) -> None:
    hook = client.post(URL, json={"url": PUBLIC_HOOK, "events": ["*"]}, headers=auth_a).json()
    first = client.post("/v1/deletion-requests", json={"subject_id": unique_subject()}, headers=auth_a).json()
    queued = _deliveries(first["id"])
    assert [d.event_type for d in queued] == ["request.no_data"]
    client.delete(f"{URL}/{hook['id']}", headers=auth_a)

    second = client.post(
        "/v1/deletion-requests", json={"subject_id": unique_subject()}, headers=auth_a
    ).json()

    assert _deliveries(second["id"]) == []
    with session_scope() as session:  # a delivery queued before the deletion is no longer signed/sent
        assert delivery_request(session, queued[0]) is None
