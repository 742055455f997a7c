from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.db import SessionDep
from app.idempotency.service import Idempotency, idempotent
from app.openapi import problem_responses
from app.pagination import Page, PageParamsDep
from app.provenance import service
from app.provenance.models import DatasetKind
from app.provenance.schemas import (
    DatasetDetail,
    DatasetIn,
    DatasetOut,
    SampleBatchResult,
    SampleIn,
    SubjectProvenance,
)
from app.security.auth import Principal, require_scope
from app.security.scopes import Scope

router = APIRouter(prefix="/v1", tags=["provenance"])
ProvenanceReader = Annotated[Principal, Depends(require_scope(Scope.PROVENANCE_READ))]
ProvenanceWriter = Annotated[Idempotency, Depends(idempotent(Scope.PROVENANCE_WRITE))]

_SAMPLE_ITEM = SampleIn.model_json_schema()
SAMPLES_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "array", "items": _SAMPLE_ITEM}},
            "application/x-ndjson": {
                "schema": {"type": "string", "description": "one SampleIn JSON object per line"}
            },
        },
    }
}


async def raw_body(request: Request) -> bytes:
    return await request.body()


@router.post("/datasets", status_code=201, response_model=DatasetOut, summary="Create a dataset")
def create_dataset(body: DatasetIn, idempotency: ProvenanceWriter) -> DatasetOut:
    """Create a dataset by a name unique in the tenant; paths then name it by that name."""
    dataset = service.create_dataset(idempotency.session, idempotency.principal, body)
    return idempotency.finish(DatasetOut.model_validate(dataset), 201)


@router.get("/datasets", response_model=Page[DatasetOut], summary="List datasets")
def list_datasets(
    principal: ProvenanceReader, session: SessionDep, page: PageParamsDep, kind: DatasetKind | None = None
) -> Page[DatasetOut]:
    """The tenant's datasets, oldest first; `kind` filters."""
    datasets, next_cursor = service.list_datasets(session, principal.tenant_id, page, kind)
    return Page(items=[DatasetOut.model_validate(d) for d in datasets], next_cursor=next_cursor)


@router.get("/datasets/{dataset}", response_model=DatasetDetail, summary="A dataset and its sample count")
def get_dataset(dataset: str, principal: ProvenanceReader, session: SessionDep) -> DatasetDetail:
    """The dataset named `dataset`, with its sample count."""
    found = service.get_dataset(session, principal.tenant_id, dataset)
    out = DatasetOut.model_validate(found)
    return DatasetDetail(**out.model_dump(), sample_count=service.count_samples(session, found))


@router.post(
    "/datasets/{dataset}/samples",
    response_model=SampleBatchResult,
    summary="Register samples in bulk (JSON array or NDJSON)",
    description=(
        "Each sample: {external_id, subject_id, text | features, label?}. Samples already registered with "
        "the same content are left as they are (`existing`); an external_id registered with other content "
        "fails the batch with 409 and nothing is stored."
    ),
    openapi_extra=SAMPLES_REQUEST_BODY,
    responses=problem_responses(409, 415, e409="An external_id is registered with other content."),
)
def register_samples(
    dataset: str,
    request: Request,
    body: Annotated[bytes, Depends(raw_body)],
    idempotency: ProvenanceWriter,
) -> SampleBatchResult:
    session, principal = idempotency.session, idempotency.principal
    found = service.get_dataset(session, principal.tenant_id, dataset)
    samples: list[SampleIn] = service.parse_sample_batch(body, request.headers.get("content-type"))
    result = service.register_samples(session, principal, found, samples)
    return idempotency.finish(result, 200)


@router.get(
    "/subjects/{subject_id}",
    response_model=SubjectProvenance,
    summary="A data subject's samples and the model versions trained on them",
)
def get_subject(subject_id: str, principal: ProvenanceReader, session: SessionDep) -> SubjectProvenance:
    """The samples of the caller's tenant that belong to the data subject, and the model versions trained on
    them. The identifier is matched by its keyed HMAC and never stored in clear."""
    return service.subject_provenance(session, principal.tenant_id, subject_id)
