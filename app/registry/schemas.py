from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.names import Name
from app.pagination import Page
from app.provenance.schemas import ExternalId
from app.registry.models import ArtifactFormat, ModelTask, VersionStatus

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Reason = Annotated[str, StringConstraints(max_length=1000)]


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    task: ModelTask
    description: Annotated[str | None, Field(max_length=2000)] = None
    policy: dict[str, Any] = Field(
        default_factory=dict, description="unlearning method and gate overrides, e.g. {method: 'auto'}"
    )


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
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
    parent_version: int | None = Field(
        default=None, ge=1, description="lineage: the version this one came from"
    )
    method: Annotated[str | None, Field(max_length=100)] = None
    training_fingerprint: Annotated[str | None, Field(max_length=64)] = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class RecipeIn(BaseModel):
    """How training runs; every field left out takes the workload's recipe, else the engine's default."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(default=None, ge=1, le=1000, description="epochs per block (default 3)")
    batch_size: int | None = Field(default=None, ge=1, le=4096, description="default 32")
    lr: float | None = Field(default=None, gt=0, le=10, description="learning rate (default 1e-3)")
    optimizer: Literal["adam", "adamw", "sgd"] | None = Field(default=None, description="default adam")
    weight_decay: float | None = Field(default=None, ge=0, le=10)
    momentum: float | None = Field(default=None, ge=0, lt=1, description="sgd only (default 0.9)")
    lr_decay: float | None = Field(
        default=None, gt=0, le=1, description="the last block trains at lr * lr_decay (default 1: constant)"
    )
    seed: int | None = Field(default=None, ge=0, description="data order and initialisation (default 0)")
    num_blocks: int | None = Field(
        default=None, ge=1, le=1000,
        description="training blocks, each subject's samples in one (default 20): what an exact restart "
        "from the block before a forgotten subject saves",
    )  # fmt: skip
    record_block_checkpoints: bool | None = Field(
        default=None, description="keep the model after each block (default true: DeepObliviate needs it)"
    )
    record_first_epoch_grads: bool | None = Field(
        default=None, description="keep each sample's first-epoch gradient (default true: first_epoch_ascent)"
    )


class BaseIn(BaseModel):
    """The model to start from: a version of this model, or a folder under the models root (a Hugging Face
    save_pretrained folder, or a torch classifier). Its tokenizer is the one used."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1, description="a registered or verified version")
    path: Annotated[str | None, StringConstraints(min_length=1, max_length=2000)] = Field(
        default=None, description="a folder under LETHE_MODELS_ROOT (relative to it)"
    )
    from_scratch: bool = Field(
        default=False, description="keep the base's architecture and tokenizer, initialise the weights anew"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.version is None) == (self.path is None):
            raise ValueError("give exactly one of version and path")
        return self


class LoraIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=8, ge=1, le=1024, description="rank of the LoRA update")
    alpha: int = Field(default=16, ge=1, le=4096)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] | None = Field(
        default=None, description="module names to adapt (default: peft's choice for the architecture)"
    )


class ArchitectureIn(BaseModel):
    """A torch classifier trained from scratch (tabular-classification, image-classification)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["mlp", "cnn"] = Field(default="mlp", description="mlp: feature vectors; cnn: images")
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [64], max_length=16, description="widths of the hidden layers"
    )
    channels: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        default=None, max_length=8, description="cnn: convolution widths (default [16, 32])"
    )
    input_shape: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None, max_length=4, description="default: the length of the samples' feature vectors"
    )
    num_classes: int | None = Field(
        default=None, ge=2, description="default: from the dataset's label map, else the largest label + 1"
    )


class TrainingParams(BaseModel):
    """What to train: from a `base` (fine-tuning), a torch classifier `architecture` from scratch, or a
    reference `workload`'s architecture and recipe. Unknown fields are refused (422)."""

    model_config = ConfigDict(extra="forbid")

    base: BaseIn | None = None
    fine_tuning: Literal["full", "lora"] = Field(
        default="full", description="lora: train low-rank adapters (peft) on a frozen base, merged on save"
    )
    lora: LoraIn | None = Field(default=None, description="LoRA settings (fine_tuning lora)")
    architecture: ArchitectureIn | None = None
    workload: Literal["digits", "bios", "minilm"] | None = Field(
        default=None, description="a reference workload's architecture and recipe"
    )
    size: Literal["small", "full"] = Field(default="small", description="the workload's size")
    max_length: int | None = Field(default=None, ge=8, le=8192, description="text: tokens per sample (128)")
    recipe: RecipeIn = Field(default_factory=RecipeIn)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [name for name in ("base", "architecture", "workload") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of base, architecture and workload, not {' and '.join(given)}")
        if self.lora is not None and self.fine_tuning != "lora":
            raise ValueError("lora settings need fine_tuning 'lora'")
        if self.fine_tuning == "lora" and self.base is None:
            raise ValueError("fine_tuning 'lora' needs a base")
        return self


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
    parent_version: int | None = Field(default=None, ge=1)
    params: TrainingParams = Field(default_factory=TrainingParams)


class VersionOut(BaseModel):
    id: str
    model: str
    version: int
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

    version: int = Field(ge=1)
    expected_version: int | None = Field(
        default=None, description="the version the alias points to now (null: the alias must not exist yet)"
    )
    reason: Reason | None = None


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expected_version: int | None = Field(default=None, description="when given, compare-and-set on it")
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
