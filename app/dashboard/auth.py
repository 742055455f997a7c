"""Dashboard sign-in: an API key is presented once on the login form and exchanged for a session cookie.

The cookie never holds the key: it names the key id, an expiry and an HMAC (settings.secret_key) bound to
the key's stored hash. Every page looks the key up again, so revoking the key ends its dashboard sessions
too. The cookie is httpOnly, Secure and SameSite=Strict (a cross-site form cannot ride on it), scoped to
/dashboard.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import SessionDep
from app.errors import forbidden
from app.security.auth import Principal
from app.security.models import ApiKey
from app.settings import get_settings

COOKIE_NAME = "lethe_dashboard"
COOKIE_PATH = "/dashboard"
SESSION_SECONDS = 8 * 3600
LOGIN_PATH = "/dashboard/login"
HOME_PATH = "/dashboard/requests"
# Where a login may send the browser afterwards: dashboard paths only (no open redirect, no query, no
# empty or dot segments).
_NEXT_PATH = re.compile(r"/dashboard(/[A-Za-z0-9_~\-][A-Za-z0-9._~\-]*)*")


class LoginRequired(Exception):
    """No valid session: the dashboard route answers a redirect to the login page."""


def _mac(key_id: str, expires: int, key_hash: str) -> str:
    secret = get_settings().secret_key.get_secret_value().encode()
    message = f"lethe-dashboard-session\x00{key_id}\x00{expires}\x00{key_hash}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def session_token(api_key: ApiKey, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_SECONDS)
    return f"{api_key.key_id}.{expires}.{_mac(api_key.key_id, expires, api_key.key_hash)}"


def principal_from_token(session: Session, token: str, now: float | None = None) -> Principal | None:
    key_id, _, rest = token.partition(".")
    expires_text, _, mac = rest.partition(".")
    if not expires_text.isdigit() or int(expires_text) < (now or time.time()):
        return None
    api_key = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one_or_none()
    if api_key is None or api_key.revoked_at is not None:
        return None
    if not hmac.compare_digest(mac, _mac(key_id, int(expires_text), api_key.key_hash)):
        return None
    return Principal(tenant_id=api_key.tenant_id, key_id=api_key.key_id, scopes=frozenset(api_key.scopes))


def set_session_cookie(response: Response, api_key: ApiKey) -> None:
    response.set_cookie(
        COOKIE_NAME,
        session_token(api_key),
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        secure=True,  # browsers accept Secure cookies from http://localhost too, so local runs work
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict")


def viewer(request: Request, session: SessionDep) -> Principal:
    """The signed-in key's principal; LoginRequired without a valid session."""
    token = request.cookies.get(COOKIE_NAME)
    principal = principal_from_token(session, token) if token else None
    if principal is None:
        raise LoginRequired
    request.state.principal = principal
    return principal


Viewer = Annotated[Principal, Depends(viewer)]


def require_same_origin(request: Request) -> None:
    """Forms post only from the dashboard's own pages (defence in depth next to SameSite=Strict)."""
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise forbidden("cross-origin form post refused", "cross-origin")


def safe_next(path: str | None) -> str:
    return path if path and _NEXT_PATH.fullmatch(path) else HOME_PATH
