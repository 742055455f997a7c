from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import StreamingResponse

from app.db import SessionDep
from app.errors import PROBLEM_CONTENT_TYPE, ProblemError
from app.idempotency.service import Idempotency, idempotent
from app.jobs.schemas import JobOut
from app.jobs.service import describe as describe_job
from app.names import NAME_PATTERN
from app.pagination import Page, PageParamsDep
from app.registry import service
from app.registry.download import build_archive
from app.registry.models import ModelTask, VersionStatus
from app.registry.schemas import (
    AliasHistoryPage,
    AliasOut,
    AliasPut,
    ModelIn,
    ModelOut,
    RollbackIn,
    TrainIn,
    VersionIn,
    VersionOut,
)
from app.security.auth import Principal, require_scope
from app.security.scopes import Scope

router = APIRouter(prefix="/v1/models", tags=["registry"])
ModelsReader = Annotated[Principal, Depends(require_scope(Scope.MODELS_READ))]
ModelsPromoter = Annotated[Principal, Depends(require_scope(Scope.MODELS_PROMOTE))]
ModelsWriter = Annotated[Idempotency, Depends(idempotent(Scope.MODELS_WRITE))]
AliasName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=100)]


@router.post("", status_code=201, response_model=ModelOut, summary="Register a model")
def create_model(body: ModelIn, idempotency: ModelsWriter) -> ModelOut:
    model = service.create_model(idempotency.session, idempotency.principal, body)
    return idempotency.finish(ModelOut.model_validate(model, from_attributes=True), 201)


@router.get("", response_model=Page[ModelOut], summary="List models")
def list_models(
    principal: ModelsReader, session: SessionDep, page: PageParamsDep, task: ModelTask | None = None
) -> Page[ModelOut]:
    models, next_cursor = service.list_models(session, principal.tenant_id, page, task)
    items = [ModelOut.model_validate(model, from_attributes=True) for model in models]
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{model}", response_model=ModelOut, summary="A model")
def get_model(model: str, principal: ModelsReader, session: SessionDep) -> ModelOut:
    found = service.get_model(session, principal.tenant_id, model)
    return ModelOut.model_validate(found, from_attributes=True)


@router.post(
    "/{model}/versions",
    status_code=201,
    response_model=VersionOut,
    summary="Register an existing artifact as a new version, with its training set",
)
def register_version(model: str, body: VersionIn, idempotency: ModelsWriter) -> VersionOut:
    session, principal = idempotency.session, idempotency.principal
    found, version = service.register_version(session, principal, model, body)
    return idempotency.finish(service.describe_version(session, found, version), 201)


@router.post(
    "/{model}/versions:train",
    status_code=202,
    response_model=JobOut,
    summary="Have the workers train a new version (full provenance); answers the training job",
)
def train_version(model: str, body: TrainIn, idempotency: ModelsWriter) -> JobOut:
    session, principal = idempotency.session, idempotency.principal
    found = service.get_model(session, principal.tenant_id, model, lock=True)
    job, _version = service.request_training(session, principal, found, body)
    return idempotency.finish(describe_job(session, job), 202)


@router.get("/{model}/versions", response_model=Page[VersionOut], summary="List a model's versions")
def list_versions(
    model: str,
    principal: ModelsReader,
    session: SessionDep,
    page: PageParamsDep,
    status: VersionStatus | None = None,
) -> Page[VersionOut]:
    found = service.get_model(session, principal.tenant_id, model)
    versions, next_cursor = service.list_versions(session, found, page, status)
    items = [service.describe_version(session, found, version) for version in versions]
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{model}/versions/{version}", response_model=VersionOut, summary="A version")
def get_version(model: str, version: int, principal: ModelsReader, session: SessionDep) -> VersionOut:
    found = service.get_model(session, principal.tenant_id, model)
    return service.describe_version(session, found, service.get_version(session, found, version))


ARTIFACT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        "description": "the artifact folder as a tar archive under `<model>-v<version>/`; headers "
        "X-Artifact-SHA256 (the version's sha256, over its files), X-Artifact-Format, Repr-Digest (the "
        "archive's own sha-256)",
    },
    409: {"content": {PROBLEM_CONTENT_TYPE: {}}, "description": "not servable, or its files changed"},
    410: {"content": {PROBLEM_CONTENT_TYPE: {}}, "description": "tainted or purged: gone for good"},
}


@router.get(
    "/{model}/versions/{version}/artifact",
    response_class=StreamingResponse,
    responses=ARTIFACT_RESPONSES,
    summary="Download a version in the format it was registered in (a tar archive of its folder)",
)
def download_artifact(
    model: str, version: int, principal: ModelsReader, session: SessionDep
) -> StreamingResponse:
    found = service.get_model(session, principal.tenant_id, model)
    target = service.get_version(session, found, version)
    if target.tainted or target.purged_at is not None:
        why = "purged" if target.purged_at is not None else f"tainted: {target.taint_reason}"
        raise ProblemError(410, "Gone", f"version {version} may not be handed out ({why})", "version-gone")
    if not target.promotable or not target.artifact_uri:
        raise ProblemError(
            409,
            "Conflict",
            f"version {version} cannot serve (status {target.status})",
            "version-not-servable",
        )
    archive = build_archive(target, f"{found.name}-v{target.version}")
    headers = {
        "Content-Length": str(archive.size),
        "Content-Disposition": f'attachment; filename="{archive.directory}.tar"',
        "X-Artifact-SHA256": target.artifact_sha256 or "",
        "X-Artifact-Format": target.artifact_format or "",
        "Repr-Digest": archive.repr_digest,
    }
    return StreamingResponse(archive.chunks(), media_type="application/x-tar", headers=headers)


@router.get("/{model}/aliases", response_model=Page[AliasOut], summary="List a model's aliases")
def list_aliases(
    model: str, principal: ModelsReader, session: SessionDep, page: PageParamsDep
) -> Page[AliasOut]:
    found = service.get_model(session, principal.tenant_id, model)
    aliases, next_cursor = service.list_aliases(session, found, page)
    return Page(
        items=[service.describe_alias(session, found, alias) for alias in aliases], next_cursor=next_cursor
    )


# Declared before the plain `{alias}` routes, which would otherwise also match ".../prod:rollback".
@router.post(
    "/{model}/aliases/{alias}:rollback",
    response_model=AliasOut,
    summary="Point the alias back at the previous version that may serve",
)
def rollback_alias(
    model: str,
    alias: str,
    principal: ModelsPromoter,
    session: SessionDep,
    body: RollbackIn | None = None,
) -> AliasOut:
    body = body or RollbackIn()
    found = service.get_model(session, principal.tenant_id, model)
    moved = service.rollback_alias(session, found, alias, body.expected_version, body.reason, principal.actor)
    session.commit()
    return service.describe_alias(session, found, moved)


@router.get("/{model}/aliases/{alias}", response_model=AliasOut, summary="The version an alias points to")
def get_alias(model: str, alias: str, principal: ModelsReader, session: SessionDep) -> AliasOut:
    found = service.get_model(session, principal.tenant_id, model)
    return service.describe_alias(session, found, service.get_alias(session, found, alias))


@router.put(
    "/{model}/aliases/{alias}",
    response_model=AliasOut,
    responses={201: {"model": AliasOut, "description": "alias created"}},
    summary="Point an alias at a version (compare-and-set on expected_version)",
)
def put_alias(
    model: str,
    alias: AliasName,
    body: AliasPut,
    principal: ModelsPromoter,
    session: SessionDep,
    response: Response,
) -> AliasOut:
    found = service.get_model(session, principal.tenant_id, model)
    target = service.get_version(session, found, body.version)
    moved, created = service.set_alias(
        session, found, alias, target, body.expected_version, body.reason, principal.actor
    )
    session.commit()
    response.status_code = 201 if created else 200
    return service.describe_alias(session, found, moved)


@router.get(
    "/{model}/aliases/{alias}/history",
    response_model=AliasHistoryPage,
    summary="An alias's changes, newest first; with ?at=T the version that served at T",
)
def alias_history(
    model: str,
    alias: str,
    principal: ModelsReader,
    session: SessionDep,
    page: PageParamsDep,
    at: Annotated[datetime | None, Query(description="a point in time (ISO 8601)")] = None,
) -> AliasHistoryPage:
    found = service.get_model(session, principal.tenant_id, model)
    target = service.get_alias(session, found, alias)
    if at is not None:
        change = service.change_in_force(session, target, at)
        items = [service.describe_change(session, change)] if change else []
        served = items[0].to_version if items else None
        return AliasHistoryPage(items=items, next_cursor=None, served_version=served)
    changes, next_cursor = service.alias_history(session, target, page)
    return AliasHistoryPage(
        items=[service.describe_change(session, change) for change in changes], next_cursor=next_cursor
    )
