"""Tenants: created by the operator (`lethe keys create` makes a missing one)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.models import AuditHead
from app.tenancy.models import Tenant


def get_tenant_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).one_or_none()


def create_tenant(session: Session, name: str) -> Tenant:
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    # The audit chain's head exists from the start, so appends only ever lock an existing row.
    session.add(AuditHead(tenant_id=tenant.id))
    session.flush()
    return tenant


def get_or_create_tenant(session: Session, name: str) -> tuple[Tenant, bool]:
    tenant = get_tenant_by_name(session, name)
    if tenant is not None:
        return tenant, False
    return create_tenant(session, name), True
