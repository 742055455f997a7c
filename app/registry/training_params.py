"""What POST /v1/models/{model}/versions:train trains: the request's `params`, over the defaults of the
model policy's `training` (app.registry.policy). Torch-free and free of the database, like the policy."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.inputs import VersionNumber
from app.registry.recipe import RecipeOverrides
from app.registry.workload_sizes import WorkloadSize


class BaseIn(BaseModel):
    """The model to start from: a version of this model, or a folder under the models root (a Hugging Face
    save_pretrained folder, or a torch classifier). Its tokenizer is the one used."""

    model_config = ConfigDict(extra="forbid")

    version: VersionNumber | None = Field(default=None, description="a registered or verified version")
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


MAX_SHARDS = 64


class LayoutIn(BaseModel):
    """SISA's layout (workers/modeling/training/shards.py): the subjects split into `shards` member models,
    each trained on its own shard in `slices`; a deletion then retrains one member from one slice on
    (method `sisa`). The served model aggregates its members."""

    model_config = ConfigDict(extra="forbid")

    shards: int = Field(default=1, ge=1, le=MAX_SHARDS, description="member models; 1: unsharded")
    slices: int | None = Field(
        default=None, ge=1, le=1000, description="slices per shard: the recipe's num_blocks (default: its)"
    )


def layout_of(text: str) -> tuple[int, int]:
    """(shards, slices) from "SxR" as the command lines write a layout; ValueError naming the form."""
    shards, _, slices = text.lower().partition("x")
    if not (shards.isdigit() and slices.isdigit() and int(shards) >= 1 and int(slices) >= 1):
        raise ValueError(f"a layout is SHARDSxSLICES, e.g. 4x5, not {text!r}")
    return int(shards), int(slices)


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
    size: WorkloadSize = Field(default="small", description="the workload's size")
    max_length: int | None = Field(default=None, ge=8, le=8192, description="text: tokens per sample (128)")
    recipe: RecipeOverrides = Field(
        default_factory=RecipeOverrides,
        description="how training runs; a setting left out takes the workload's recipe, else the default",
    )
    layout: LayoutIn = Field(default_factory=LayoutIn, description="a sharded (SISA) layout")

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [name for name in ("base", "architecture", "workload") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of base, architecture and workload, not {' and '.join(given)}")
        if self.lora is not None and self.fine_tuning != "lora":
            raise ValueError("lora settings need fine_tuning 'lora'")
        if self.fine_tuning == "lora" and self.base is None:
            raise ValueError("fine_tuning 'lora' needs a base")
        if self.layout.slices is not None and "num_blocks" in self.recipe.model_fields_set:
            raise ValueError("give the slices per shard once: layout.slices or recipe.num_blocks")
        return self
