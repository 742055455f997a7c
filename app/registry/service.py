"""The model registry's domain logic. Every change of a version or an alias goes through a function here
that also appends the audit event; the pipeline uses the same functions to promote and taint."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit.service import record
from app.db import utcnow
from app.domain import DomainError
from app.errors import conflict, not_found, unprocessable
from app.jobs.models import Job, JobKind, JobStatus, Stage
from app.jobs.params import TrainParams as TrainJobParams
from app.outbox.celery_client import CHECK_ARTIFACT_TASK, TRAIN_TASK
from app.outbox.service import enqueue
from app.pagination import PageParams, paginate
from app.provenance.membership import (
    attach_heldout,
    attach_training_set,
    derive_training_set,
    heldout_sample_ids,
    reserve_heldout,
    resolve_heldout,
    resolve_training_set,
    with_training_set_of,
)
from app.registry import artifacts
from app.registry.models import (
    Alias,
    AliasHistory,
    Model,
    ModelTask,
    ModelVersion,
    VersionStatus,
)
from app.registry.policy import model_policy, stored_policy
from app.registry.schemas import (
    AliasChange,
    AliasOut,
    ModelIn,
    ModelPatch,
    TrainIn,
    VersionIn,
    VersionOut,
)
from app.registry.training import check_training_data, resolve_base
from app.security.auth import Principal

# --- models ---------------------------------------------------------------------------------------------


def create_model(session: Session, principal: Principal, body: ModelIn) -> Model:
    if find_model(session, principal.tenant_id, body.name) is not None:
        raise conflict(f"a model named {body.name!r} exists", "model-exists")
    model = Model(
        tenant_id=principal.tenant_id,
        name=body.name,
        task=body.task,
        description=body.description,
        policy=stored_policy(body.policy),
    )
    session.add(model)
    try:
        session.flush()
    except IntegrityError as exc:
        raise conflict(f"a model named {body.name!r} exists", "model-exists") from exc
    record(
        session, principal.tenant_id, "model", model.id, "model.created",
        {"name": model.name, "task": model.task}, principal.actor,
    )  # fmt: skip
    return model


def update_model(session: Session, principal: Principal, model: Model, body: ModelPatch) -> Model:
    """Apply the keys the patch sets (the caller holds the model row locked); the policy is replaced whole."""
    changed = sorted(body.model_fields_set)
    if "description" in body.model_fields_set:
        model.description = body.description
    if "policy" in body.model_fields_set:
        model.policy = stored_policy(body.policy) if body.policy is not None else {}
    record(
        session, principal.tenant_id, "model", model.id, "model.updated",
        {"name": model.name, "changed": changed}, principal.actor,
    )  # fmt: skip
    return model


def find_model(session: Session, tenant_id: str, name: str) -> Model | None:
    return session.scalars(
        select(Model).where(Model.tenant_id == tenant_id, Model.name == name)
    ).one_or_none()


def get_model(session: Session, tenant_id: str, name: str, *, lock: bool = False) -> Model:
    stmt = select(Model).where(Model.tenant_id == tenant_id, Model.name == name)
    model = session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()
    if model is None:
        raise not_found("model", name)
    return model


def list_models(
    session: Session, tenant_id: str, page: PageParams, task: ModelTask | None = None
) -> tuple[list[Model], str | None]:
    stmt = select(Model).where(Model.tenant_id == tenant_id)
    if task is not None:
        stmt = stmt.where(Model.task == task)
    return paginate(session, stmt, [Model.created_at, Model.id], page)


# --- versions -------------------------------------------------------------------------------------------


def _next_version_number(session: Session, model: Model) -> int:
    # The caller holds the model row locked (get_model(lock=True)): numbers are handed out one at a time.
    return (
        session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)) or 0
    ) + 1


def get_version(session: Session, model: Model, number: int) -> ModelVersion:
    version = session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == number)
    ).one_or_none()
    if version is None:
        raise not_found(f"version {number} of model", model.name)
    return version


def _parent(session: Session, model: Model, number: int | None) -> ModelVersion | None:
    if number is None:
        return None
    parent = session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == number)
    ).one_or_none()
    if parent is None:
        raise unprocessable(
            f"parent_version: model {model.name!r} has no version {number}", "unknown-version"
        )
    return parent


def _new_version(session: Session, model: Model, status: VersionStatus, **fields: Any) -> ModelVersion:
    version = ModelVersion(
        tenant_id=model.tenant_id,
        model_id=model.id,
        version=_next_version_number(session, model),
        status=status,
        **fields,
    )
    session.add(version)
    session.flush()
    return version


def register_version(
    session: Session, principal: Principal, model_name: str, body: VersionIn
) -> tuple[Model, ModelVersion]:
    """Record an existing artifact as a new root version, trained on the named training set.

    The files are recognised and hashed before the model row is locked (that takes as long as reading
    them). A version from the artifact store serves at once (the workers wrote and loaded it); any other
    waits in `checking` for a worker to load it."""
    info = artifacts.inspect_artifact(
        body.artifact_uri,
        ModelTask(get_model(session, principal.tenant_id, model_name).task),
        body.artifact_sha256,
    )
    model = get_model(session, principal.tenant_id, model_name, lock=True)
    training_set = resolve_training_set(
        session, principal.tenant_id, body.training_set.dataset, body.training_set.external_ids
    )
    heldout: tuple[int, ...] = ()
    if body.heldout is not None:  # named held-out samples: a whole dataset, or listed ones
        heldout = resolve_heldout(
            session, principal.tenant_id, body.heldout.dataset or body.training_set.dataset,
            body.heldout.external_ids, training_set,
        )  # fmt: skip
    parent = _parent(session, model, body.parent_version)
    stored = artifacts.store_artifact_id(body.artifact_uri) is not None
    version = _new_version(
        session,
        model,
        VersionStatus.REGISTERED if stored else VersionStatus.CHECKING,
        parent_id=parent.id if parent else None,
        artifact_uri=body.artifact_uri,
        artifact_sha256=info.sha256,
        artifact_format=info.format,
        status_reason=None if stored else "waiting for a worker to load the artifact",
        method=body.method,
        training_fingerprint=body.training_fingerprint,
        metrics=body.metrics,
    )
    attach_training_set(session, version, training_set)
    attach_heldout(session, version, heldout)
    if not stored:
        enqueue(session, CHECK_ARTIFACT_TASK, {"version_id": version.id})
    record(
        session, principal.tenant_id, "model_version", version.id, "model_version.registered",
        {"model": model.name, "version": version.version, "artifact_uri": version.artifact_uri,
         "artifact_sha256": info.sha256, "artifact_format": info.format, "artifact": info.facts,
         "training_set_size": version.training_set_size, "heldout_size": len(heldout),
         "dataset_id": training_set.dataset_id},
        principal.actor,
    )  # fmt: skip
    return model, version


def request_training(
    session: Session, principal: Principal, model: Model, body: TrainIn
) -> tuple[Job, ModelVersion]:
    """A version in status training with its provenance recorded now (the training set minus a held-out
    share of its subjects), a train job, and its task in the outbox; the workers fill in the artifact."""
    task = ModelTask(model.task)
    params = model_policy(model.policy).training_params(body.params)
    named = params.base.version if params.base is not None else None
    base_version = get_version(session, model, named) if named is not None else None
    base = resolve_base(task, params, base_version)
    requested = resolve_training_set(
        session, principal.tenant_id, body.training_set.dataset, body.training_set.external_ids
    )
    check_training_data(session, task, requested)
    share = body.heldout.share(listed=body.training_set.external_ids is not None)
    trained, heldout = reserve_heldout(session, requested, share, params.recipe.seed)
    parent = _parent(session, model, body.parent_version)
    version = _new_version(session, model, VersionStatus.TRAINING, parent_id=parent.id if parent else None)
    # Fine-tuned from one of its versions, the model also holds what that version learnt.
    attach_training_set(
        session,
        version,
        *(with_training_set_of(session, trained, base_version) if base_version else [trained]),
    )
    attach_heldout(session, version, heldout)
    job = Job(
        tenant_id=principal.tenant_id,
        model_id=model.id,
        kind=JobKind.TRAIN,
        status=JobStatus.QUEUED,
        stage=Stage.QUEUED,
        candidate_version_id=version.id,
    )
    TrainJobParams(
        version_id=version.id,
        dataset_id=requested.dataset_id,
        training=params.model_dump(mode="json", exclude_unset=True),
        base=base,
        base_version_id=base_version.id if base_version else None,
    ).write(job)
    session.add(job)
    session.flush()
    enqueue(
        session, TRAIN_TASK, {"job_id": job.id, "tenant_id": principal.tenant_id, "version_id": version.id}
    )
    record(
        session, principal.tenant_id, "model_version", version.id, "model_version.training_requested",
        {"model": model.name, "version": version.version, "job_id": job.id,
         "training_set_size": version.training_set_size, "heldout_size": len(heldout)},
        principal.actor,
    )  # fmt: skip
    return job, version


def list_versions(
    session: Session, model: Model, page: PageParams, status: VersionStatus | None = None
) -> tuple[list[ModelVersion], str | None]:
    stmt = select(ModelVersion).where(ModelVersion.model_id == model.id)
    if status is not None:
        stmt = stmt.where(ModelVersion.status == status)
    return paginate(session, stmt, [ModelVersion.version], page)


def version_number(session: Session, version_id: str | None) -> int | None:
    if version_id is None:
        return None
    version = session.get(ModelVersion, version_id)
    return version.version if version is not None else None


def heldout_size(session: Session, version: ModelVersion) -> int:
    if version.training_root_id is None:
        return 0
    return session.scalar(select(func.count()).select_from(heldout_sample_ids(version).subquery())) or 0


def describe_version(session: Session, model: Model, version: ModelVersion) -> VersionOut:
    return VersionOut(
        id=version.id,
        model=model.name,
        version=version.version,
        status=VersionStatus(version.status),
        promotable=version.promotable,
        parent=version_number(session, version.parent_id),
        training_set_size=version.training_set_size,
        method=version.method,
        exact=version.exact,
        tainted=version.tainted,
        tainted_at=version.tainted_at,
        taint_reason=version.taint_reason,
        status_reason=version.status_reason,
        artifact_uri=version.artifact_uri,
        artifact_sha256=version.artifact_sha256,
        artifact_format=version.artifact_format,
        heldout_size=heldout_size(session, version),
        training_fingerprint=version.training_fingerprint,
        metrics=version.metrics,
        verification=version.verification,
        created_at=version.created_at,
        purged_at=version.purged_at,
    )


def set_version_status(
    session: Session, version: ModelVersion, status: VersionStatus, actor: str, **changes: Any
) -> None:
    """Move a version to `status` (and set other columns, e.g. artifact_uri, verification), audited."""
    previous = version.status
    version.status = status
    for column, value in changes.items():
        if not hasattr(ModelVersion, column):
            raise AttributeError(column)
        setattr(version, column, value)
    record(
        session, version.tenant_id, "model_version", version.id, "model_version.status_changed",
        {"version": version.version, "from": previous, "to": status, "changed": sorted(changes)}, actor,
    )  # fmt: skip


def taint_version(session: Session, version: ModelVersion, reason: str, actor: str) -> None:
    """Mark a version as trained on forgotten data: no alias may point to it again."""
    if version.tainted:
        return
    version.tainted, version.tainted_at, version.taint_reason = True, utcnow(), reason
    record(
        session, version.tenant_id, "model_version", version.id, "model_version.tainted",
        {"version": version.version, "reason": reason}, actor,
    )  # fmt: skip


def create_derived_version(
    session: Session,
    parent: ModelVersion,
    removed_sample_ids: Iterable[int],
    actor: str,
    *,
    status: VersionStatus = VersionStatus.CANDIDATE,
    method: str | None = None,
    exact: bool = False,
    **fields: Any,
) -> ModelVersion:
    """A child of `parent` (e.g. the candidate of an unlearning job) whose training set is the parent's
    minus `removed_sample_ids`."""
    model = session.get(Model, parent.model_id)
    assert model is not None
    session.scalars(select(Model).where(Model.id == model.id).with_for_update()).one()
    # the candidate is saved by the parent's own kind of adapter: the same format, handed back alike
    fields.setdefault("artifact_format", parent.artifact_format)
    version = _new_version(session, model, status, parent_id=parent.id, method=method, exact=exact, **fields)
    removed = derive_training_set(session, parent, version, removed_sample_ids)
    record(
        session, version.tenant_id, "model_version", version.id, "model_version.derived",
        {"model": model.name, "version": version.version, "parent": parent.version, "method": method,
         "removed_samples": removed},
        actor,
    )  # fmt: skip
    return version


# --- aliases --------------------------------------------------------------------------------------------


def _find_alias(session: Session, model: Model, name: str, *, lock: bool = False) -> Alias | None:
    stmt = select(Alias).where(Alias.model_id == model.id, Alias.name == name)
    return session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()


def get_alias(session: Session, model: Model, name: str) -> Alias:
    alias = _find_alias(session, model, name)
    if alias is None:
        raise not_found(f"alias {name} of model", model.name)
    return alias


def list_aliases(session: Session, model: Model, page: PageParams) -> tuple[list[Alias], str | None]:
    return paginate(session, select(Alias).where(Alias.model_id == model.id), [Alias.name], page)


def describe_alias(session: Session, model: Model, alias: Alias) -> AliasOut:
    number = version_number(session, alias.version_id)
    assert number is not None
    return AliasOut(
        model=model.name,
        name=alias.name,
        version=number,
        created_at=alias.created_at,
        updated_at=alias.updated_at,
    )


class AliasMoved(DomainError):
    """The alias no longer points where the caller expected (compare-and-set lost)."""

    type_suffix = "stale-expected-version"


class VersionNotPromotable(DomainError):
    """The version may not serve: tainted, purged, or not registered or verified."""

    type_suffix = "version-not-promotable"


def _stale(name: str, expected: int | None, current: int | None) -> AliasMoved:
    shown = "no version (the alias does not exist)" if current is None else f"version {current}"
    return AliasMoved(
        f"alias {name} points to {shown}, not the expected_version {expected}", current_version=current
    )


def _refuse_unpromotable(version: ModelVersion) -> None:
    if version.promotable:
        return
    why = "tainted" if version.tainted else "purged" if version.purged_at else f"status {version.status}"
    raise VersionNotPromotable(
        f"version {version.version} cannot serve ({why}); only registered or verified, untainted versions can"
    )


def _move(
    session: Session,
    model: Model,
    alias: Alias,
    target: ModelVersion,
    reason: str | None,
    actor: str,
    action: str,
) -> None:
    previous = alias.version_id
    now = utcnow()
    alias.version_id, alias.updated_at = target.id, now
    session.add(
        AliasHistory(
            alias_id=alias.id, from_version_id=previous, to_version_id=target.id, reason=reason, actor=actor,
            changed_at=now,
        )
    )  # fmt: skip
    record(
        session, model.tenant_id, "alias", alias.id, action,
        {"model": model.name, "alias": alias.name, "from_version": version_number(session, previous),
         "to_version": target.version, "reason": reason},
        actor,
    )  # fmt: skip


def set_alias(
    session: Session,
    model: Model,
    name: str,
    target: ModelVersion,
    expected_version: int | None,
    reason: str | None,
    actor: str,
) -> tuple[Alias, bool]:
    """Point alias `name` at `target` if it still points at `expected_version` (compare-and-set).
    Answers the alias and whether it was created. AliasMoved when stale, VersionNotPromotable when
    `target` may not serve."""
    alias = _find_alias(session, model, name, lock=True)
    current = version_number(session, alias.version_id) if alias else None
    if current != expected_version:
        raise _stale(name, expected_version, current)
    _refuse_unpromotable(target)
    if alias is not None:
        if alias.version_id != target.id:
            _move(session, model, alias, target, reason, actor, "alias.moved")
        return alias, False
    now = utcnow()
    alias = Alias(
        tenant_id=model.tenant_id,
        model_id=model.id,
        name=name,
        version_id=target.id,
        created_at=now,
        updated_at=now,
    )
    session.add(alias)
    try:
        session.flush()
    except IntegrityError as exc:  # created concurrently: our expectation (no alias) is stale
        raise _stale(name, expected_version, None) from exc
    session.add(
        AliasHistory(
            alias_id=alias.id, from_version_id=None, to_version_id=target.id, reason=reason, actor=actor,
            changed_at=now,
        )
    )  # fmt: skip
    record(
        session, model.tenant_id, "alias", alias.id, "alias.created",
        {"model": model.name, "alias": name, "to_version": target.version, "reason": reason}, actor,
    )  # fmt: skip
    return alias, True


def rollback_alias(
    session: Session, model: Model, name: str, expected_version: int | None, reason: str | None, actor: str
) -> Alias:
    """Point the alias back at the newest version that served under it before, with a lower number than
    the current one, and may still serve (tainted, purged and unverified versions are passed over)."""
    alias = _find_alias(session, model, name, lock=True)
    if alias is None:
        raise not_found(f"alias {name} of model", model.name)
    current = session.get(ModelVersion, alias.version_id)
    assert current is not None
    if expected_version is not None and expected_version != current.version:
        raise _stale(name, expected_version, current.version)
    served_ids = select(AliasHistory.to_version_id).where(AliasHistory.alias_id == alias.id)
    candidates = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.id.in_(served_ids), ModelVersion.version < current.version)
        .order_by(ModelVersion.version.desc())
    )
    target = next((version for version in candidates if version.promotable), None)
    if target is None:
        raise conflict(
            f"alias {name} has no earlier version that may serve (untainted, registered or verified)",
            "no-rollback-target",
        )
    _move(session, model, alias, target, reason, actor, "alias.rolled_back")
    return alias


def alias_history(session: Session, alias: Alias, page: PageParams) -> tuple[list[AliasHistory], str | None]:
    stmt = select(AliasHistory).where(AliasHistory.alias_id == alias.id)
    return paginate(session, stmt, [AliasHistory.id], page, descending=True)


def change_in_force(session: Session, alias: Alias, at: datetime) -> AliasHistory | None:
    """The alias change in force at `at`: its to_version is the version that served then."""
    return session.scalars(
        select(AliasHistory)
        .where(AliasHistory.alias_id == alias.id, AliasHistory.changed_at <= at)
        .order_by(AliasHistory.changed_at.desc(), AliasHistory.id.desc())
        .limit(1)
    ).one_or_none()


def describe_change(session: Session, change: AliasHistory) -> AliasChange:
    to_version = version_number(session, change.to_version_id)
    assert to_version is not None
    return AliasChange(
        from_version=version_number(session, change.from_version_id),
        to_version=to_version,
        reason=change.reason,
        actor=change.actor,
        changed_at=change.changed_at,
    )
