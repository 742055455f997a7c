from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.names import Name
from app.provenance.models import DatasetKind

ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
SubjectId = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    kind: DatasetKind
    description: Annotated[str | None, Field(max_length=2000)] = None


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="Lethe's own id of the dataset; the API's paths name a dataset by its `name`")
    name: str
    kind: DatasetKind
    description: str | None
    created_at: datetime


class DatasetDetail(DatasetOut):
    sample_count: int


class SampleIn(BaseModel):
    """One training sample. A text dataset needs `text`; a classification dataset needs `label` and
    `text` or `features`."""

    model_config = ConfigDict(extra="forbid")

    external_id: ExternalId
    subject_id: SubjectId = Field(
        description="the data subject's identifier in clear; stored only as an HMAC"
    )
    text: str | None = None
    features: list[Any] | dict[str, Any] | None = None
    label: int | str | None = None


class SampleBatchResult(BaseModel):
    dataset: str
    received: int = Field(description="samples in the request")
    created: int = Field(description="samples registered by this request")
    existing: int = Field(description="samples already registered with the same content (left unchanged)")


class SubjectSample(BaseModel):
    id: int
    dataset: str
    external_id: str
    content_hash: str
    created_at: datetime
    erased_at: datetime | None


class SubjectModelVersion(BaseModel):
    model: str
    version: int
    status: str
    tainted: bool


class SubjectProvenance(BaseModel):
    subject_id: str = Field(description="the identifier as the caller sent it")
    samples: list[SubjectSample]
    model_versions: list[SubjectModelVersion]
