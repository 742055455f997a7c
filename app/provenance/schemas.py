from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.names import Name
from app.provenance.models import DatasetKind

ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
SubjectId = Annotated[str, StringConstraints(min_length=1, max_length=512)]
LabelName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
MAX_CLASSES = 100_000


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    kind: DatasetKind
    description: Annotated[str | None, Field(max_length=2000)] = None
    label_map: dict[LabelName, Annotated[int, Field(ge=0, lt=MAX_CLASSES)]] | None = Field(
        default=None,
        max_length=MAX_CLASSES,
        description='classification: class name -> integer label, e.g. {"benign": 0, "malignant": 1}; '
        "samples may then give their label by name (it is stored as the integer)",
    )

    @model_validator(mode="after")
    def _label_map_fits(self) -> Self:
        if self.label_map is None:
            return self
        if self.kind != DatasetKind.CLASSIFICATION:
            raise ValueError("label_map: only a classification dataset has labels")
        if len(set(self.label_map.values())) != len(self.label_map):
            raise ValueError("label_map: two class names map to the same label")
        return self


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="Lethe's own id of the dataset; the API's paths name a dataset by its `name`")
    name: str
    kind: DatasetKind
    description: str | None
    label_map: dict[str, int] | None
    created_at: datetime


class DatasetDetail(DatasetOut):
    sample_count: int


class SampleIn(BaseModel):
    """One training sample. A text dataset needs `text`; a classification dataset needs `label` (an integer
    >= 0, or a class name of the dataset's label_map) and `text` or `features` (a list of numbers, or
    equally long nested lists for images; every sample of the dataset the same shape)."""

    model_config = ConfigDict(extra="forbid")

    external_id: ExternalId
    subject_id: SubjectId = Field(
        description="the data subject's identifier in clear; stored only as an HMAC"
    )
    text: str | None = None
    features: list[Any] | None = None
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
