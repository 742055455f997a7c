from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import StreamingResponse

from app.db import SessionDep
from app.errors import ProblemError
from app.idempotency.service import Idempotency, idempotent
from app.inputs import VersionNumber
from app.jobs.schemas import JobOut
from app.jobs.service import describe as describe_job
from app.names import NAME_PATTERN
from app.openapi import problem_responses
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
    ModelPatch,
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
ModelsEditor = Annotated[Principal, Depends(require_scope(Scope.MODELS_WRITE))]
AliasName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=100)]


@router.post("", status_code=201, response_model=ModelOut, summary="Register a model")
def create_model(body: ModelIn, idempotency: ModelsWriter) -> ModelOut:
    """Register a model by a name unique in the tenant; paths then name it by that name. Its policy sets the
    unlearning method and gate overrides."""
    model = service.create_model(idempotency.session, idempotency.principal, body)
    return idempotency.finish(ModelOut.model_validate(model, from_attributes=True), 201)


@router.get("", response_model=Page[ModelOut], summary="List models")
def list_models(
    principal: ModelsReader, session: SessionDep, page: PageParamsDep, task: ModelTask | None = None
) -> Page[ModelOut]:
    """The tenant's models, oldest first; `task` filters."""
    models, next_cursor = service.list_models(session, principal.tenant_id, page, task)
    items = [ModelOut.model_validate(model, from_attributes=True) for model in models]
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{model}", response_model=ModelOut, summary="A model")
def get_model(model: str, principal: ModelsReader, session: SessionDep) -> ModelOut:
    """The model named `model`."""
    found = service.get_model(session, principal.tenant_id, model)
    return ModelOut.model_validate(found, from_attributes=True)


@router.patch(
    "/{model}",
    response_model=ModelOut,
    summary="Change a model's description or policy (a policy change applies to stages starting after it)",
)
def update_model(model: str, body: ModelPatch, principal: ModelsEditor, session: SessionDep) -> ModelOut:
    """Change the model's description or replace its policy (validated as at registration; null: none).
    Jobs already past a stage keep the policy they read; the audit trail records the change."""
    found = service.get_model(session, principal.tenant_id, model, lock=True)
    service.update_model(session, principal, found, body)
    session.commit()
    return ModelOut.model_validate(found, from_attributes=True)


@router.post(
    "/{model}/versions",
    status_code=201,
    response_model=VersionOut,
    summary="Register an existing artifact as a new version, with its training set",
)
def register_version(model: str, body: VersionIn, idempotency: ModelsWriter) -> VersionOut:
    """Register an artifact that exists as the model's next version (1, 2, ...), with the samples it was
    trained on (the whole dataset, or the listed ones); the registrant attests it."""
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
    """Queue a training job that makes the next version from the training set, with full provenance; poll the
    job it answers."""
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
    """The model's versions, oldest first; `status` filters."""
    found = service.get_model(session, principal.tenant_id, model)
    versions, next_cursor = service.list_versions(session, found, page, status)
    items = [service.describe_version(session, found, version) for version in versions]
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{model}/versions/{version}", response_model=VersionOut, summary="A version")
def get_version(
    model: str, version: VersionNumber, principal: ModelsReader, session: SessionDep
) -> VersionOut:
    """Version number `version` of the model: status, lineage, training-set size, method, verification."""
    found = service.get_model(session, principal.tenant_id, model)
    return service.describe_version(session, found, service.get_version(session, found, version))


ARTIFACT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        "description": "the artifact folder as a tar archive under `<model>-v<version>/`; headers "
        "X-Artifact-SHA256 (the version's sha256, over its files), X-Artifact-Format, Repr-Digest (the "
        "archive's own sha-256)",
    },
    **problem_responses(
        409, 410, e409="not servable, or its files changed", e410="tainted or purged: gone for good"
    ),
}


@router.get(
    "/{model}/versions/{version}/artifact",
    response_class=StreamingResponse,
    responses=ARTIFACT_RESPONSES,
    summary="Download a version in the format it was registered in (a tar archive of its folder)",
)
def download_artifact(
    model: str, version: VersionNumber, principal: ModelsReader, session: SessionDep
) -> StreamingResponse:
    """Hand a version back to its owner as it was registered (a Hugging Face folder, a torch classifier,
    Lethe's layout): a forgotten model in the customer's own format. Never a tainted or purged one."""
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
    """The model's aliases and the versions they point to."""
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
    responses=problem_responses(409, e409="`expected_version` is stale, or no earlier version may serve."),
)
def rollback_alias(
    model: str,
    alias: str,
    principal: ModelsPromoter,
    session: SessionDep,
    body: RollbackIn | None = None,
) -> AliasOut:
    """Point the alias back at the previous version that may still serve (verified, untainted); compare-and-
    set on `expected_version` when given (409 when stale)."""
    body = body or RollbackIn()
    found = service.get_model(session, principal.tenant_id, model)
    moved = service.rollback_alias(session, found, alias, body.expected_version, body.reason, principal.actor)
    session.commit()
    return service.describe_alias(session, found, moved)


@router.get("/{model}/aliases/{alias}", response_model=AliasOut, summary="The version an alias points to")
def get_alias(model: str, alias: str, principal: ModelsReader, session: SessionDep) -> AliasOut:
    """The version the alias points to now."""
    found = service.get_model(session, principal.tenant_id, model)
    return service.describe_alias(session, found, service.get_alias(session, found, alias))


@router.put(
    "/{model}/aliases/{alias}",
    response_model=AliasOut,
    responses={
        201: {"model": AliasOut, "description": "alias created"},
        **problem_responses(409, e409="`expected_version` is stale: the alias points elsewhere now."),
    },
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
    """Point the alias at a verified, untainted version: compare-and-set on `expected_version` (409 when the
    alias has moved); 201 when the alias is new."""
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
    """The alias's changes, newest first; with `at`, the change in force at that time and the version that
    served."""
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
