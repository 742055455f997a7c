"""`lethe keys ...`: API key administration for operators (on the database, no API needed)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from sqlalchemy import select

from app.commands import command_group, stdout_console, table
from app.db import session_scope, utcnow
from app.security.auth import forget_key
from app.security.keys import create_api_key, validate_scopes
from app.security.models import ApiKey
from app.security.scopes import ALL_SCOPES
from app.tenancy.models import Tenant
from app.tenancy.service import get_or_create_tenant, get_tenant_by_name

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

cli = command_group("keys", "Create, list and revoke API keys.")


def expand_scopes(values: list[str]) -> list[str]:
    scopes = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if "all" in scopes:
        return list(ALL_SCOPES)
    return validate_scopes(scopes)


@cli.command("create")
def create_key(
    tenant: Annotated[str, typer.Option(help="tenant name (created when missing)")],
    scopes: Annotated[
        list[str],
        typer.Option(
            "--scope", help=f"a scope (repeat, or comma-separate); known: {', '.join(ALL_SCOPES)}, or 'all'"
        ),
    ],
    name: Annotated[str | None, typer.Option(help="a label for the key")] = None,
) -> None:
    """Create an API key for a tenant; the key is printed once, alone on stdout."""
    try:
        chosen = expand_scopes(scopes)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    with session_scope() as session:
        found, created = get_or_create_tenant(session, tenant)
        api_key, plaintext = create_api_key(session, found.id, chosen, name)
        key_id = api_key.key_id
    if created:
        typer.echo(f"created tenant {tenant}", err=True)
    typer.echo(
        f"key id {key_id}, scopes {' '.join(chosen)}; store the key now, it is not shown again:", err=True
    )
    print(plaintext)


@cli.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None,
    revoked: Annotated[bool, typer.Option("--revoked", help="include revoked keys")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON array instead of a table")] = False,
) -> None:
    """The keys (never their secrets): key id, tenant, label, scopes, created, revoked."""
    with session_scope() as session:
        query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
        if tenant is not None:
            found = get_tenant_by_name(session, tenant)
            if found is None:
                typer.echo(f"error: no tenant {tenant}", err=True)
                raise typer.Exit(EXIT_NOT_FOUND)
            query = query.where(ApiKey.tenant_id == found.id)
        if not revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        rows = [
            {
                "key_id": key.key_id,
                "tenant": tenant_name,
                "name": key.name,
                "scopes": list(key.scopes),
                "created_at": key.created_at.isoformat(),
                "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
            }
            for key, tenant_name in session.execute(query.order_by(Tenant.name, ApiKey.created_at))
        ]
    if as_json:
        print(json.dumps(rows))
        return
    grid = table("key id", "tenant", "name", "scopes", "created", "revoked")
    for row in rows:
        grid.add_row(
            row["key_id"],
            row["tenant"],
            row["name"] or "",
            " ".join(row["scopes"]),
            row["created_at"][:19],
            (row["revoked_at"] or "")[:19],
        )
    stdout_console().print(grid)


@cli.command("revoke")
def revoke_key(key_id: Annotated[str, typer.Argument(help="the key id (from `lethe keys list`)")]) -> None:
    """Revoke an API key by its key id."""
    with session_scope() as session:
        api_key = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one_or_none()
        if api_key is None:
            typer.echo(f"error: no API key {key_id}", err=True)
            raise typer.Exit(EXIT_NOT_FOUND)
        if api_key.revoked_at is None:
            api_key.revoked_at = utcnow()
    # Other API processes stop accepting it within settings.api_key_cache_seconds.
    forget_key(key_id)
    typer.echo(f"revoked {key_id}", err=True)
