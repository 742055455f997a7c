"""Webhook signatures, Standard Webhooks style.

The receiver recomputes base64(HMAC-SHA256(secret, "<webhook-id>.<webhook-timestamp>.<body>")) and
compares it with the `v1,` entry of the webhook-signature header; the timestamp bounds replays.
Secrets look like `whsec_<base64 of 32 random bytes>`; the HMAC key is the decoded bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
SECRET_BYTES = 32
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    """The signature, the timestamp or the secret of a delivery does not check out."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def derived_secret(master_key: str, purpose: str) -> str:
    """A secret reproducible from the service's key, so it needs no storage (per-request callbacks)."""
    digest = hmac.new(master_key.encode(), purpose.encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(digest).decode()


def _key_bytes(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError as exc:
        raise SignatureError("the webhook secret is not base64") from exc


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 digest>` of the signed content `id.timestamp.body`."""
    signed = message_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(_key_bytes(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def encode_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes that are signed and sent."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


def signed_headers(secret: str, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
        "content-type": "application/json",
    }


def verify(
    secret: str,
    headers: dict[str, str],
    body: bytes,
    *,
    now: int | None = None,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """What a receiver does; raises SignatureError unless one v1 signature matches and the timestamp is
    within the tolerance. Used by the tests and documented for clients."""
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        offered = lowered["webhook-signature"].split()
    except (KeyError, ValueError) as exc:
        raise SignatureError("missing or malformed webhook headers") from exc
    now = int(time.time()) if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        raise SignatureError("the webhook timestamp is outside the tolerance")
    expected = signature(secret, message_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise SignatureError("no matching webhook signature")
