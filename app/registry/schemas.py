from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.inputs import Int32, VersionNumber
from app.names import Name
from app.pagination import Page
from app.provenance.schemas import ExternalId
from app.registry.models import ArtifactFormat, ModelTask, VersionStatus
from app.registry.policy import ModelPolicy
from app.registry.training_params import TrainingParams

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Reason = Annotated[str, StringConstraints(max_length=1000)]


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    task: ModelTask
    description: Annotated[str | None, Field(max_length=2000)] = None
    policy: ModelPolicy = Field(
        default_factory=ModelPolicy, description="unlearning method and gate overrides, e.g. {method: 'auto'}"
    )


class ModelPatch(BaseModel):
    """Changes to a model; a key left out keeps its value. `policy` replaces the whole policy (null: none)."""

    model_config = ConfigDict(extra="forbid")

    description: Annotated[str | None, Field(max_length=2000)] = None
    policy: ModelPolicy | None = None


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="Lethe's own id of the model; the API's paths name a model by its `name`")
    name: str
    task: ModelTask
    description: str | None
    policy: dict[str, Any]
    created_at: datetime


class TrainingSetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: Name
    external_ids: list[ExternalId] | None = Field(
        default=None, description="the samples trained on; omitted = every sample of the dataset as of now"
    )


class HeldoutIn(BaseModel):
    """Samples the artifact was NOT trained on, of the subjects' own distribution: verification compares
    the forgotten samples with them. Without held-out data a deletion cannot be verified (inconclusive)."""

    model_config = ConfigDict(extra="forbid")

    dataset: Name | None = Field(default=None, description="default: the training set's dataset")
    external_ids: list[ExternalId] | None = Field(
        default=None, min_length=1, description="omitted: every sample of the dataset as of now"
    )


class VersionIn(BaseModel):
    """An existing artifact and what it was trained on; the registrant attests it. The files are checked at
    once (format, config, weights, sha256: 422 naming the problem); then a worker loads the model, and the
    version moves from `checking` to `registered` (promotable) or `failed` (`status_reason` says why)."""

    model_config = ConfigDict(extra="forbid")

    artifact_uri: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(
        description="a folder under the models root (LETHE_MODELS_ROOT; relative, absolute or file://), an "
        "fsspec URL of an allowed protocol (s3://...), or artifact://<id> from the artifact store"
    )
    artifact_sha256: Sha256Hex | None = Field(
        default=None, description="when given, the artifact's computed sha256 must equal it (else 422)"
    )
    training_set: TrainingSetIn
    heldout: HeldoutIn | None = None
    parent_version: VersionNumber | None = Field(
        default=None, description="lineage: the version this one came from"
    )
    method: Annotated[str | None, Field(max_length=100)] = None
    training_fingerprint: Annotated[str | None, Field(max_length=64)] = None
    metrics: dict[str, Any] = Field(default_factory=dict)


DEFAULT_HELDOUT_FRACTION = 0.2


class HeldoutShareIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fraction: float | None = Field(
        default=None, ge=0, le=0.9,
        description=f"share of the training set's subjects kept out of training for verification. Default: "
        f"{DEFAULT_HELDOUT_FRACTION} for a whole dataset; 0 when training_set lists its samples (the "
        "dataset's other samples are held out then). 0 keeps none: deletions end inconclusive unless the "
        "dataset has other untrained samples",
    )  # fmt: skip

    def share(self, listed: bool) -> float:
        if self.fraction is not None:
            return self.fraction
        return 0.0 if listed else DEFAULT_HELDOUT_FRACTION


class TrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    training_set: TrainingSetIn
    heldout: HeldoutShareIn = Field(default_factory=HeldoutShareIn)
    parent_version: VersionNumber | None = None
    params: TrainingParams = Field(default_factory=TrainingParams)


class VersionOut(BaseModel):
    id: str = Field(description="Lethe's own id of the version; the API's paths name it by `version`")
    model: str
    version: int = Field(description="the version's number within its model (1, 2, ...)")
    status: VersionStatus
    promotable: bool
    parent: int | None = Field(description="the version this one was derived from")
    training_set_size: int | None
    method: str | None
    exact: bool
    tainted: bool
    tainted_at: datetime | None
    taint_reason: str | None
    status_reason: str | None = Field(description="why the version has its status, when that needs saying")
    artifact_uri: str | None
    artifact_sha256: str | None
    artifact_format: ArtifactFormat | None
    heldout_size: int = Field(description="samples kept out of training that verification may use")
    training_fingerprint: str | None
    metrics: dict[str, Any]
    verification: dict[str, Any] | None
    created_at: datetime
    purged_at: datetime | None


class AliasPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: VersionNumber
    expected_version: Int32 | None = Field(
        default=None, description="the version the alias points to now (null: the alias must not exist yet)"
    )
    reason: Reason | None = None


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected_version: Int32 | None = Field(default=None, description="when given, compare-and-set on it")
    reason: Reason | None = None


class AliasOut(BaseModel):
    model: str
    name: str
    version: int
    created_at: datetime
    updated_at: datetime


class AliasChange(BaseModel):
    from_version: int | None
    to_version: int
    reason: str | None
    actor: str | None
    changed_at: datetime


class AliasHistoryPage(Page[AliasChange]):
    served_version: int | None = Field(
        default=None, description="with ?at=T: the version the alias pointed to at T (null: none yet)"
    )
