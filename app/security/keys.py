"""API keys: `<prefix><key_id>_<secret>`. The key id is the public lookup part; only a keyed hash
(HMAC-SHA256 with settings.secret_key) of the whole key is stored, compared in constant time."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.security.models import ApiKey
from app.security.scopes import ALL_SCOPES
from app.settings import get_settings

KEY_ID_BYTES = 8  # 16 hex characters: never contains the "_" separator
SECRET_BYTES = 32


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    secret: str


def hash_api_key(plaintext: str) -> str:
    secret_key = get_settings().secret_key.get_secret_value().encode()
    return hmac.digest(secret_key, plaintext.encode(), "sha256").hex()  # one C call


def parse_api_key(plaintext: str) -> ParsedKey | None:
    """Split a presented key into its parts; None when it does not have the key format."""
    prefix = get_settings().api_key_prefix
    if not plaintext.startswith(prefix):
        return None
    key_id, sep, secret = plaintext[len(prefix) :].partition("_")
    if not sep or len(key_id) != 2 * KEY_ID_BYTES or not secret:
        return None
    return ParsedKey(key_id=key_id, secret=secret)


def validate_scopes(scopes: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(scopes))
    unknown = [scope for scope in chosen if scope not in ALL_SCOPES]
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(ALL_SCOPES)}")
    return chosen


def create_api_key(
    session: Session, tenant_id: str, scopes: Iterable[str], name: str | None = None
) -> tuple[ApiKey, str]:
    """Store a new key for the tenant; the plaintext is returned once and never stored."""
    key_id = secrets.token_hex(KEY_ID_BYTES)
    plaintext = f"{get_settings().api_key_prefix}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    api_key = ApiKey(
        tenant_id=tenant_id,
        key_id=key_id,
        key_hash=hash_api_key(plaintext),
        scopes=validate_scopes(scopes),
        name=name,
    )
    session.add(api_key)
    session.flush()
    return api_key, plaintext


def find_active_key(session: Session, plaintext: str) -> ApiKey | None:
    parsed = parse_api_key(plaintext)
    if parsed is None:
        return None
    api_key = session.scalars(select(ApiKey).where(ApiKey.key_id == parsed.key_id)).one_or_none()
    if api_key is None or api_key.revoked_at is not None:
        return None
    if not hmac.compare_digest(api_key.key_hash, hash_api_key(plaintext)):
        return None
    return api_key
