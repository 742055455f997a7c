"""The audit trail as people read it: entities by name (model and version, request id), a short detail
of each event, filter choices drawn from the trail itself, and the CSV export (GET /v1/audit/export.csv,
and the dashboard's download).

Names are looked up in batches, one query per entity type for a page of events; an entity whose row is
gone (a deleted webhook, say) is named from its event's own data.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from app.audit.models import AuditEvent
from app.audit.service import list_filters
from app.dashboard.export import batches, csv_download, csv_line
from app.dashboard.text import plain_value
from app.jobs.models import Job
from app.provenance.models import Dataset
from app.registry.models import Alias, Model, ModelVersion
from app.requests.models import DeletionRequest
from app.security.auth import Principal, require_scope
from app.security.scopes import Scope
from app.webhooks.models import WebhookSubscription

ENTITY_LABELS = {
    "deletion_request": "deletion request",
    "model": "model",
    "model_version": "model version",
    "alias": "alias",
    "job": "job",
    "dataset": "dataset",
    "webhook_subscription": "webhook",
}
# The filter's action choices come from this many of the newest events (of the chosen entity type):
# a distinct over a whole trail of millions of events would cost a scan per page view, and the trail's
# vocabulary recurs with every request.
ACTION_CHOICES_WINDOW = 20_000
CSV_COLUMNS = (
    "seq",
    "created_at",
    "entity_type",
    "entity_id",
    "entity",
    "action",
    "actor",
    "detail",
    "data",
    "prev_hash",
    "hash",
)
CSV_BATCH = 1000


@dataclass(frozen=True)
class EntityName:
    label: str  # "bios-lm v2", a request's id, "dataset support-tickets"
    url: str | None = None  # where the dashboard shows it


@dataclass(frozen=True)
class AuditFilters:
    entity_type: str | None = None
    entity_id: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def conditions(self, tenant_id: str) -> list[Any]:
        return list_filters(tenant_id, self.entity_type, self.entity_id, self.action, self.since, self.until)


def day_range(since: date | None, until: date | None) -> tuple[datetime | None, datetime | None]:
    """Calendar days (UTC) as the half-open instant range the trail is filtered by: `until` included."""
    start = datetime.combine(since, time.min, UTC) if since else None
    end = datetime.combine(until + timedelta(days=1), time.min, UTC) if until else None
    return start, end


# ---------------------------------------------------------------- names


def _by_type(events: Iterable[AuditEvent]) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = defaultdict(set)
    for event in events:
        ids[event.entity_type].add(event.entity_id)
    return ids


def entity_names(
    session: Session, tenant_id: str, events: Sequence[AuditEvent]
) -> dict[tuple[str, str], EntityName]:
    """(entity type, id) -> its name, for every entity the events name."""
    ids = _by_type(events)
    names: dict[tuple[str, str], EntityName] = {}
    if wanted := ids.get("deletion_request"):
        for request_id in session.scalars(
            select(DeletionRequest.id).where(
                DeletionRequest.tenant_id == tenant_id, DeletionRequest.id.in_(wanted)
            )
        ):
            names["deletion_request", request_id] = EntityName(
                request_id, f"/dashboard/requests/{request_id}"
            )
    if wanted := ids.get("model_version"):
        rows = session.execute(
            select(ModelVersion.id, ModelVersion.version, Model.id, Model.name)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(ModelVersion.tenant_id == tenant_id, ModelVersion.id.in_(wanted))
        )
        for version_id, number, model_id, model in rows:
            names["model_version", version_id] = EntityName(
                f"{model} v{number}", f"/dashboard/models#m-{model_id}-v{number}"
            )
    if wanted := ids.get("model"):
        for model_id, model in session.execute(
            select(Model.id, Model.name).where(Model.tenant_id == tenant_id, Model.id.in_(wanted))
        ):
            names["model", model_id] = EntityName(model, f"/dashboard/models#m-{model_id}")
    if wanted := ids.get("alias"):
        rows = session.execute(
            select(Alias.id, Alias.name, Model.id, Model.name)
            .join(Model, Model.id == Alias.model_id)
            .where(Alias.tenant_id == tenant_id, Alias.id.in_(wanted))
        )
        for alias_id, alias, model_id, model in rows:
            names["alias", alias_id] = EntityName(f"{model} alias {alias}", f"/dashboard/models#m-{model_id}")
    if wanted := ids.get("job"):
        rows = session.execute(
            select(Job.id, Job.kind, Model.id, Model.name)
            .join(Model, Model.id == Job.model_id)
            .where(Job.tenant_id == tenant_id, Job.id.in_(wanted))
        )
        for job_id, kind, model_id, model in rows:
            names["job", job_id] = EntityName(f"{kind} job on {model}", f"/dashboard/models#m-{model_id}")
    if wanted := ids.get("dataset"):
        for dataset_id, dataset in session.execute(
            select(Dataset.id, Dataset.name).where(Dataset.tenant_id == tenant_id, Dataset.id.in_(wanted))
        ):
            names["dataset", dataset_id] = EntityName(f"dataset {dataset}")
    if wanted := ids.get("webhook_subscription"):
        for subscription_id, url in session.execute(
            select(WebhookSubscription.id, WebhookSubscription.url).where(
                WebhookSubscription.tenant_id == tenant_id, WebhookSubscription.id.in_(wanted)
            )
        ):
            names["webhook_subscription", subscription_id] = EntityName(f"webhook to {urlsplit(url).netloc}")
    for event in events:
        key = (event.entity_type, event.entity_id)
        if key not in names:
            names[key] = _name_from_data(event)
    return names


def _name_from_data(event: AuditEvent) -> EntityName:
    """The name an event's own data gives (for an entity whose row is gone), else its type and id."""
    data = event.data or {}
    if event.entity_type == "model_version" and data.get("model") and data.get("version"):
        return EntityName(f"{data['model']} v{data['version']}")
    if event.entity_type == "alias" and data.get("model") and data.get("alias"):
        return EntityName(f"{data['model']} alias {data['alias']}")
    if event.entity_type in ("model", "dataset") and data.get("name"):
        return EntityName(f"{ENTITY_LABELS[event.entity_type]} {data['name']}".removeprefix("model "))
    if event.entity_type == "webhook_subscription" and data.get("url"):
        return EntityName(f"webhook to {urlsplit(str(data['url'])).netloc}")
    if event.entity_type == "deletion_request":
        return EntityName(event.entity_id)
    label = ENTITY_LABELS.get(event.entity_type, event.entity_type.replace("_", " "))
    return EntityName(f"{label} {event.entity_id[:8]}")


# ---------------------------------------------------------------- details


def event_detail(event: AuditEvent) -> str:
    """One line of what the event recorded: a status change as "from → to", then its other facts."""
    data = dict(event.data or {})
    parts = []
    if "from" in data and "to" in data:
        before, after = data.pop("from"), data.pop("to")
        parts.append(f"{before} → {after}" if before else f"→ {after}")
    parts += [
        f"{name}: {plain_value(value)}" for name, value in data.items() if value not in (None, "", [], {})
    ]
    return "; ".join(parts)


# ---------------------------------------------------------------- filter choices


def entity_types(session: Session, tenant_id: str) -> list[str]:
    """The entity types in the tenant's trail: a loose scan of the (tenant, type, id) index, one probe
    per type, however long the trail."""
    found: list[str] = []
    last = ""
    while True:
        following = session.scalar(
            select(AuditEvent.entity_type)
            .where(AuditEvent.tenant_id == tenant_id, AuditEvent.entity_type > last)
            .order_by(AuditEvent.entity_type)
            .limit(1)
        )
        if following is None:
            return found
        found.append(following)
        last = following


def recent_actions(session: Session, tenant_id: str, entity_type: str | None) -> list[str]:
    """The actions among the newest ACTION_CHOICES_WINDOW events (of `entity_type`, when given)."""
    window: Select[Any] = select(AuditEvent.action).where(AuditEvent.tenant_id == tenant_id)
    if entity_type:
        window = window.where(AuditEvent.entity_type == entity_type)
    newest = window.order_by(AuditEvent.seq.desc()).limit(ACTION_CHOICES_WINDOW).subquery()
    return sorted(session.scalars(select(newest.c.action).distinct()))


# ---------------------------------------------------------------- CSV


def csv_lines(tenant_id: str, filters: AuditFilters) -> Iterator[str]:
    """The header, then one line per event, oldest first (seq order: the chain's order), streamed in
    batches from a session of its own."""
    yield csv_line(CSV_COLUMNS)
    stmt = select(AuditEvent).where(*filters.conditions(tenant_id))
    for session, events in batches(stmt, [AuditEvent.seq], CSV_BATCH):
        names = entity_names(session, tenant_id, events)
        for event in events:
            yield csv_line(
                [
                    event.seq,
                    event.created_at.isoformat(),
                    event.entity_type,
                    event.entity_id,
                    names[event.entity_type, event.entity_id].label,
                    event.action,
                    event.actor or "",
                    event_detail(event),
                    json.dumps(event.data or {}, sort_keys=True, default=str),
                    event.prev_hash,
                    event.hash,
                ]
            )


def csv_response(tenant_id: str, filters: AuditFilters) -> StreamingResponse:
    return csv_download(csv_lines(tenant_id, filters), "audit-trail")


router = APIRouter(tags=["audit"])
AuditReader = Annotated[Principal, Depends(require_scope(Scope.AUDIT_READ))]


@router.get(
    "/v1/audit/export.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "one line per audit event, oldest first"}},
    summary="CSV of the audit trail",
)
def export_audit_trail(
    principal: AuditReader,
    entity_type: Annotated[str | None, Query(description="e.g. deletion_request, model_version")] = None,
    entity_id: str | None = None,
    action: str | None = None,
    since: Annotated[datetime | None, Query(description="created at or after")] = None,
    until: Annotated[datetime | None, Query(description="created before")] = None,
) -> StreamingResponse:
    """Columns: seq, created_at, entity_type, entity_id, entity (its name: model and version, request
    id, ...), action, actor, detail (one readable line), data (the event's JSON, as hashed), prev_hash,
    hash. With prev_hash and hash a reader can check the chain's links without Lethe."""
    filters = AuditFilters(entity_type, entity_id, action, since, until)
    return csv_response(principal.tenant_id, filters)
