"""Datasets, bulk sample registration and subject lookup.

Bulk registration is built for volume: one validation pass in pydantic-core, one HMAC per distinct
subject, and on Postgres one COPY straight into `samples` (falling back to a staged, set-based insert
when the batch repeats known samples). Re-sending a sample with the same content is a no-op; a known
external_id with other content fails the whole batch (409) and nothing is written.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson
import psycopg
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.audit.service import record
from app.db import utcnow
from app.errors import ProblemError, conflict, not_found
from app.pagination import PageParams, paginate
from app.provenance.membership import versions_trained_on
from app.provenance.models import Dataset, DatasetKind, DataSubject, Sample
from app.provenance.schemas import (
    DatasetIn,
    SampleBatchResult,
    SampleIn,
    SubjectModelVersion,
    SubjectProvenance,
    SubjectSample,
)
from app.security.auth import Principal
from app.security.subjects import subject_hmac
from app.settings import get_settings

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
JSON_TYPES = frozenset({"application/json", ""})
MAX_REPORTED_ERRORS = 20
MAX_REPORTED_CONFLICTS = 10

_batch_adapter = TypeAdapter(list[SampleIn])
_sample_adapter = TypeAdapter(SampleIn)


# --- datasets -----------------------------------------------------------------------------------------


def create_dataset(session: Session, principal: Principal, body: DatasetIn) -> Dataset:
    if find_dataset(session, principal.tenant_id, body.name) is not None:
        raise conflict(f"a dataset named {body.name!r} exists", "dataset-exists")
    dataset = Dataset(
        tenant_id=principal.tenant_id,
        name=body.name,
        kind=body.kind,
        description=body.description,
        label_map=body.label_map,
    )
    session.add(dataset)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create won the name
        raise conflict(f"a dataset named {body.name!r} exists", "dataset-exists") from exc
    record(
        session, principal.tenant_id, "dataset", dataset.id, "dataset.created",
        {"name": dataset.name, "kind": dataset.kind}, principal.actor,
    )  # fmt: skip
    return dataset


def find_dataset(session: Session, tenant_id: str, name: str) -> Dataset | None:
    return session.scalars(
        select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.name == name)
    ).one_or_none()


def get_dataset(session: Session, tenant_id: str, name: str) -> Dataset:
    dataset = find_dataset(session, tenant_id, name)
    if dataset is None:
        raise not_found("dataset", name)
    return dataset


def count_samples(session: Session, dataset: Dataset) -> int:
    return session.scalar(select(func.count(Sample.id)).where(Sample.dataset_id == dataset.id)) or 0


def list_datasets(
    session: Session, tenant_id: str, page: PageParams, kind: DatasetKind | None = None
) -> tuple[list[Dataset], str | None]:
    stmt = select(Dataset).where(Dataset.tenant_id == tenant_id)
    if kind is not None:
        stmt = stmt.where(Dataset.kind == kind)
    return paginate(session, stmt, [Dataset.created_at, Dataset.id], page)


# --- parsing a batch ------------------------------------------------------------------------------------


def _body_errors(error: ValidationError, prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    return [
        {"loc": ["body", *prefix, *item["loc"]], "msg": item["msg"], "type": item["type"]}
        for item in error.errors(include_url=False, include_input=False)[:MAX_REPORTED_ERRORS]
    ]


def _parse_ndjson(body: bytes) -> list[SampleIn]:
    samples: list[SampleIn] = []
    errors: list[dict[str, Any]] = []
    for line_number, line in enumerate(body.splitlines()):
        if not line.strip():
            continue
        try:
            samples.append(_sample_adapter.validate_json(line))
        except ValidationError as exc:
            errors.extend(_body_errors(exc, (line_number,)))
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
    if errors:
        raise RequestValidationError(errors[:MAX_REPORTED_ERRORS])
    return samples


def parse_sample_batch(body: bytes, content_type: str | None) -> list[SampleIn]:
    """Samples from a JSON array or NDJSON body; 415 for another media type, 422 for bad items."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in NDJSON_TYPES:
        samples = _parse_ndjson(body)
    elif media_type in JSON_TYPES:
        try:
            samples = _batch_adapter.validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(_body_errors(exc)) from exc
    else:
        raise ProblemError(
            415, "Unsupported media type", "send application/json (an array) or application/x-ndjson",
            "unsupported-media-type",
        )  # fmt: skip
    limit = get_settings().max_bulk_samples
    if not samples:
        raise RequestValidationError([{"loc": ["body"], "msg": "no samples", "type": "too_short"}])
    if len(samples) > limit:
        raise RequestValidationError(
            [{"loc": ["body"], "msg": f"at most {limit} samples per request", "type": "too_long"}]
        )
    return samples


def _missing(loc: list[Any], msg: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": "missing"}


def _invalid(loc: list[Any], msg: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": "value_error"}


def feature_shape(value: Any) -> tuple[int, ...] | None:
    """The shape of a rectangular nested list of finite numbers ((13,) for 13 features), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return () if math.isfinite(value) else None
    if not isinstance(value, list) or not value:
        return None
    shapes = {feature_shape(item) for item in value}
    if len(shapes) != 1 or None in shapes:
        return None
    return (len(value), *shapes.pop())


def _known_shape(session: Session, dataset: Dataset) -> tuple[int, ...] | None:
    stored = session.scalars(
        select(Sample.features).where(Sample.dataset_id == dataset.id, Sample.features.is_not(None)).limit(1)
    ).first()
    return feature_shape(stored) if stored is not None else None


def _label_value(label: int | str, label_map: dict[str, int] | None) -> int | str:
    """The integer a label stands for; the text of what is wrong with it otherwise."""
    if isinstance(label, int):
        if label < 0:
            return "a label is an integer >= 0"
        if label_map is not None and label not in label_map.values():
            return f"label {label} is not a value of the dataset's label_map"
        return label
    if label_map is None:
        return f"label {label!r} is not an integer (create the dataset with a label_map to send class names)"
    if label not in label_map:
        shown = ", ".join(repr(name) for name in list(label_map)[:10])
        return f"label {label!r} is not a class of the dataset's label_map ({shown})"
    return label_map[label]


def fit_samples(session: Session, samples: Sequence[SampleIn], dataset: Dataset) -> list[SampleIn]:
    """What a dataset's kind demands of each sample, checked for the whole batch before anything is
    written: text for a text dataset; for a classification dataset a usable label (class names mapped
    through the dataset's label_map) and text or features of the dataset's one shape. Answers the samples
    with their labels as integers; 422 naming each unusable field otherwise."""
    errors: list[dict[str, Any]] = []
    fitted: list[SampleIn] = []
    shape = _known_shape(session, dataset) if dataset.kind == DatasetKind.CLASSIFICATION else None
    for index, sample in enumerate(samples):
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
        if dataset.kind == DatasetKind.TEXT:
            if not sample.text:
                errors.append(_missing([index, "text"], "a text dataset needs text"))
            fitted.append(sample)
            continue
        label: int | str | None = None
        if sample.label is None:
            errors.append(_missing([index, "label"], "a classification sample needs a label"))
        else:
            label = _label_value(sample.label, dataset.label_map)
            if isinstance(label, str):
                errors.append(_invalid([index, "label"], label))
        if sample.text is None and sample.features is None:
            errors.append(_missing([index], "give text or features"))
        if sample.features is not None:
            found = feature_shape(sample.features)
            if found is None:
                errors.append(
                    _invalid(
                        [index, "features"], "features are a list of finite numbers (or equal nested lists)"
                    )
                )
            elif shape is None:
                shape = found
            elif found != shape:
                errors.append(
                    _invalid(
                        [index, "features"],
                        f"features of shape {list(found)}, the dataset's are {list(shape)}",
                    )
                )
        fitted.append(sample if label == sample.label else sample.model_copy(update={"label": label}))
    if errors:
        raise RequestValidationError(errors[:MAX_REPORTED_ERRORS])
    return fitted


# --- storing a batch ------------------------------------------------------------------------------------


def content_hash(text: str | None, features: Any, label: Any) -> str:
    """sha256 of a sample's canonical content; outlives the content itself for the audit."""
    canonical = orjson.dumps(
        {"features": features, "label": label, "text": text}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(canonical).hexdigest()


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


class SampleRow(NamedTuple):
    """A sample as stored, in the column order of the COPY below."""

    external_id: str
    subject_hmac: str
    content_hash: str
    text: str | None
    features_json: str | None
    label_json: str | None


def build_rows(samples: Sequence[SampleIn]) -> list[SampleRow]:
    hmacs: dict[str, str] = {}
    rows = []
    for sample in samples:
        hashed = hmacs.get(sample.subject_id)
        if hashed is None:
            hashed = hmacs[sample.subject_id] = subject_hmac(sample.subject_id)
        rows.append(
            SampleRow(
                sample.external_id,
                hashed,
                content_hash(sample.text, sample.features, sample.label),
                sample.text,
                _json_text(sample.features),
                _json_text(sample.label),
            )
        )
    return rows


_SAMPLE_COLUMNS = "external_id, subject_hmac, content_hash, text, features, label"
_COPY_SAMPLES = f"COPY samples (tenant_id, dataset_id, created_at, {_SAMPLE_COLUMNS}) FROM STDIN"
_STAGE_TABLE = "incoming_samples"
_CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGE_TABLE} (
    ord integer, external_id text, subject_hmac text, content_hash text,
    text text, features jsonb, label jsonb
) ON COMMIT DELETE ROWS
"""
_COPY_STAGE = f"COPY {_STAGE_TABLE} (ord, {_SAMPLE_COLUMNS}) FROM STDIN"
_INSERT_FROM_STAGE = f"""
INSERT INTO samples (tenant_id, dataset_id, created_at, {_SAMPLE_COLUMNS})
SELECT %(tenant_id)s, %(dataset_id)s, now(), {_SAMPLE_COLUMNS}
FROM {_STAGE_TABLE} ORDER BY ord
ON CONFLICT (dataset_id, external_id) DO NOTHING
"""
_FIND_CONFLICTS = f"""
SELECT DISTINCT i.external_id FROM {_STAGE_TABLE} i
JOIN samples s ON s.dataset_id = %(dataset_id)s AND s.external_id = i.external_id
WHERE s.content_hash <> i.content_hash OR s.subject_hmac <> i.subject_hmac
LIMIT {MAX_REPORTED_CONFLICTS}
"""
_INSERT_SUBJECTS = """
INSERT INTO data_subjects (tenant_id, subject_hmac, created_at)
SELECT %(tenant_id)s, subject_hmac, now() FROM unnest(%(hmacs)s::text[]) AS subject_hmac
ON CONFLICT (tenant_id, subject_hmac) DO NOTHING
"""


def _store_rows_postgres(session: Session, tenant_id: str, dataset_id: str, rows: Sequence[SampleRow]) -> int:
    """Answers how many samples were new. First try: COPY straight into `samples` inside a savepoint
    (new samples, the usual case); if some external_id is already there, fall back to COPY into a temp
    table and one INSERT ... SELECT that skips the known samples and checks they are unchanged."""
    raw = session.connection().connection.driver_connection
    with raw.cursor() as cursor:
        try:
            with raw.transaction(), cursor.copy(_COPY_SAMPLES) as copy:
                for row in rows:
                    copy.write_row((tenant_id, dataset_id, "now", *row))
            created = len(rows)
        except psycopg.errors.UniqueViolation:
            created = _store_rows_via_stage(cursor, tenant_id, dataset_id, rows)
        hmacs = sorted({row.subject_hmac for row in rows})
        cursor.execute(_INSERT_SUBJECTS, {"tenant_id": tenant_id, "hmacs": hmacs})
    return created


def _store_rows_via_stage(
    cursor: psycopg.Cursor[Any], tenant_id: str, dataset_id: str, rows: Sequence[SampleRow]
) -> int:
    params = {"tenant_id": tenant_id, "dataset_id": dataset_id}
    cursor.execute(_CREATE_STAGE)
    cursor.execute(f"TRUNCATE {_STAGE_TABLE}")
    with cursor.copy(_COPY_STAGE) as copy:
        for ordinal, row in enumerate(rows):
            copy.write_row((ordinal, *row))
    cursor.execute(_INSERT_FROM_STAGE, params)
    created = cursor.rowcount
    if created < len(rows):
        cursor.execute(_FIND_CONFLICTS, params)
        _refuse_conflicts([external_id for (external_id,) in cursor.fetchall()])
    return created


def _refuse_conflicts(external_ids: Sequence[str]) -> None:
    if external_ids:
        shown = ", ".join(repr(external_id) for external_id in external_ids)
        raise conflict(
            f"samples already registered with other content or subject: {shown}; nothing was stored",
            "sample-conflict",
        )


def _store_rows_portable(session: Session, tenant_id: str, dataset_id: str, rows: Sequence[SampleRow]) -> int:
    """The same contract through the ORM layer, for the embedded SQLite database of the demo."""
    wanted = {row.external_id for row in rows}
    existing = dict(
        session.execute(
            select(Sample.external_id, Sample.content_hash.concat(Sample.subject_hmac)).where(
                Sample.dataset_id == dataset_id, Sample.external_id.in_(wanted)
            )
        ).all()
    )
    fresh: dict[str, SampleRow] = {}
    clashing = []
    for row in rows:
        known = existing.get(row.external_id) or (
            fresh[row.external_id].content_hash + fresh[row.external_id].subject_hmac
            if row.external_id in fresh
            else None
        )
        if known is None:
            fresh[row.external_id] = row
        elif known != row.content_hash + row.subject_hmac:
            clashing.append(row.external_id)
    _refuse_conflicts(clashing[:MAX_REPORTED_CONFLICTS])
    now = utcnow()
    if fresh:
        session.execute(
            insert(Sample),
            [
                {
                    "tenant_id": tenant_id, "dataset_id": dataset_id, "external_id": row.external_id,
                    "subject_hmac": row.subject_hmac, "content_hash": row.content_hash, "text": row.text,
                    "features": orjson.loads(row.features_json) if row.features_json else None,
                    "label": orjson.loads(row.label_json) if row.label_json else None, "created_at": now,
                }
                for row in fresh.values()
            ],
        )  # fmt: skip
    hmacs = {row.subject_hmac for row in rows}
    known_subjects = set(
        session.scalars(
            select(DataSubject.subject_hmac).where(
                DataSubject.tenant_id == tenant_id, DataSubject.subject_hmac.in_(hmacs)
            )
        )
    )
    new_subjects = [
        {"tenant_id": tenant_id, "subject_hmac": h, "created_at": now} for h in hmacs - known_subjects
    ]
    if new_subjects:
        session.execute(insert(DataSubject), new_subjects)
    return len(fresh)


def register_samples(
    session: Session, principal: Principal, dataset: Dataset, samples: Sequence[SampleIn]
) -> SampleBatchResult:
    rows = build_rows(fit_samples(session, samples, dataset))
    if session.get_bind().dialect.name == "postgresql":
        created = _store_rows_postgres(session, principal.tenant_id, dataset.id, rows)
    else:
        created = _store_rows_portable(session, principal.tenant_id, dataset.id, rows)
    result = SampleBatchResult(
        dataset=dataset.name, received=len(rows), created=created, existing=len(rows) - created
    )
    record(
        session, principal.tenant_id, "dataset", dataset.id, "samples.registered",
        {"received": result.received, "created": result.created, "existing": result.existing},
        principal.actor,
    )  # fmt: skip
    return result


# --- subjects -------------------------------------------------------------------------------------------


def subject_provenance(session: Session, tenant_id: str, subject_id: str) -> SubjectProvenance:
    hashed = subject_hmac(subject_id)
    samples = session.execute(
        select(Sample, Dataset.name)
        .join(Dataset, Dataset.id == Sample.dataset_id)
        .where(Sample.tenant_id == tenant_id, Sample.subject_hmac == hashed)
        .order_by(Sample.id)
    ).all()
    seen: dict[str, SubjectModelVersion] = {}
    for hit in versions_trained_on(session, tenant_id, subject_hmac=hashed):
        seen.setdefault(
            hit.version_id,
            SubjectModelVersion(
                model=hit.model_name, version=hit.version, status=hit.status, tainted=hit.tainted
            ),
        )
    return SubjectProvenance(
        subject_id=subject_id,
        samples=[
            SubjectSample(
                id=sample.id,
                dataset=dataset_name,
                external_id=sample.external_id,
                content_hash=sample.content_hash,
                created_at=sample.created_at,
                erased_at=sample.erased_at,
            )
            for sample, dataset_name in samples
        ],
        model_versions=list(seen.values()),
    )
