"""`lethe keys ...`: API key administration for operators."""

from __future__ import annotations

import argparse
import sys

from sqlalchemy import select

from app.db import session_scope, utcnow
from app.security.auth import forget_key
from app.security.keys import create_api_key, validate_scopes
from app.security.models import ApiKey
from app.security.scopes import ALL_SCOPES
from app.tenancy.service import get_or_create_tenant


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="manage API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)

    create = actions.add_parser("create", help="create an API key (printed once) for a tenant")
    create.add_argument("--tenant", required=True, help="tenant name (created when missing)")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        help=f"a scope (repeat, or comma-separate); known: {', '.join(ALL_SCOPES)}, or 'all'",
    )
    create.add_argument("--name", help="a label for the key")
    create.set_defaults(func=create_key_command)

    revoke = actions.add_parser("revoke", help="revoke an API key by its key id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=revoke_key_command)


def expand_scopes(values: list[str]) -> list[str]:
    scopes = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if "all" in scopes:
        return list(ALL_SCOPES)
    return validate_scopes(scopes)


def create_key_command(args: argparse.Namespace) -> int:
    try:
        scopes = expand_scopes(args.scopes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with session_scope() as session:
        tenant, created = get_or_create_tenant(session, args.tenant)
        api_key, plaintext = create_api_key(session, tenant.id, scopes, args.name)
        key_id = api_key.key_id
    if created:
        print(f"created tenant {args.tenant}", file=sys.stderr)
    print(
        f"key id {key_id}, scopes {' '.join(scopes)}; store the key now, it is not shown again:",
        file=sys.stderr,
    )
    print(plaintext)
    return 0


def revoke_key_command(args: argparse.Namespace) -> int:
    with session_scope() as session:
        api_key = session.scalars(select(ApiKey).where(ApiKey.key_id == args.key_id)).one_or_none()
        if api_key is None:
            print(f"error: no API key {args.key_id}", file=sys.stderr)
            return 1
        if api_key.revoked_at is None:
            api_key.revoked_at = utcnow()
    # Other API processes stop accepting it within settings.api_key_cache_seconds.
    forget_key(args.key_id)
    print(f"revoked {args.key_id}", file=sys.stderr)
    return 0
