"""The unlearning methods the service runs: the one list of their names, and each method's settings.

A method's code is `workers/unlearning/<name>.py`; what an operator may tune about it (a model policy's
`method_config.<name>`) is its config class here, with the defaults and what they mean. They live in app/
rather than beside the code because the API validates policies and must not import workers/ or torch;
the workers build every method's config from these classes, so there is one definition of each setting.

`MethodName` is the list: the API's method enum, the policy's `method`, `chain` and `method_config`, the
workers' registry (checked equal by tests/engine/test_method_registry.py) and the benchmarks all come from
it. Adding a method: docs/adding-a-method.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)

from app.registry.recipe import RecipeOverrides

AUTO = "auto"  # not a method: the model's policy and its served version decide (workers/pipeline/chain.py)


class MethodName(StrEnum):
    DEEPOBLIVIATE = "deepobliviate"
    FINETUNE = "finetune"
    FIRST_EPOCH_ASCENT = "first_epoch_ascent"
    LORA_RESIDUAL_ALIGNMENT = "lora_residual_alignment"
    NABLA_TAU = "nabla_tau"
    RETRAIN = "retrain"


# Baselines run when a policy's chain names them (the gate's calibration needs a method it must reject),
# but a deletion request cannot ask for one: they are not deletion methods.
BASELINES = frozenset({MethodName.FINETUNE})
REQUESTABLE = tuple(name for name in MethodName if name not in BASELINES)


def choice_enum(enum_name: str, methods: Iterable[MethodName], doc: str) -> type[StrEnum]:
    """An enum of `auto` and `methods`, for a field that takes a method name or `auto`."""
    choice = StrEnum(enum_name, {"AUTO": AUTO, **{method.name: method.value for method in methods}})
    choice.__doc__ = doc
    return choice


MethodChoice = choice_enum("MethodChoice", MethodName, "A registered method, or `auto`.")


class MethodConfig(BaseModel):
    """Settings of one method; unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DeepObliviateConfig(MethodConfig):
    early_stop: bool = Field(
        False,
        description="stop once the residual memory has decayed and stitch the rest on (approximate); off: "
        "an exact restart. Off by default: measured on digits the residual memory does not decay under a "
        "constant learning rate and stitching cost 1.5-2 accuracy points",
    )
    eps: NonNegativeFloat = Field(
        0.01, description="early stop when the fitted decay slope falls below this, per block"
    )
    max_residual: NonNegativeFloat = Field(
        0.05, description="... and the fitted residual is below this share of the original block update"
    )
    min_blocks: PositiveInt = Field(4, description="retrained blocks before the first fit")


class FineTuneConfig(MethodConfig):
    """A few steps, as the gate's calibration asks; the learning rate one would pick to polish a model."""

    steps: NonNegativeInt = 20
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 0.0


class FirstEpochAscentConfig(MethodConfig):
    allow_current_gradients: bool = Field(
        True, description="without recorded first-epoch gradients use the current model's (off: refuse)"
    )
    initial_step: PositiveFloat = Field(
        1e-3, description="first probe, as a fraction of the norm of the parameters moved"
    )
    max_doublings: PositiveInt = 30
    bisection_steps: PositiveInt = 10
    repair_lr: PositiveFloat | None = Field(None, description="None: 1e-4 for text models, 1e-3 otherwise")
    batch_size: PositiveInt = 32
    repair_max_steps: NonNegativeInt = 200
    check_every: PositiveInt = Field(10, description="repair steps between checks of the retain loss")
    retain_tolerance: NonNegativeFloat = Field(
        0.02, description="repair stops once the retain loss is within this many nats of the served model's"
    )
    rounds: PositiveInt = Field(3, description="ascent-and-repair rounds at most")
    level_tolerance: NonNegativeFloat = Field(
        0.1, description="another round when the repair pulled the forget loss this far below the level"
    )


class LoraResidualAlignmentConfig(MethodConfig):
    rank: PositiveInt = 8
    lora_alpha: PositiveInt = 16
    lr: PositiveFloat = 1e-3
    batch_size: PositiveInt = 32
    forget_weight: NonNegativeFloat = Field(
        1.0, description="lambda: weight of the forget features' distance"
    )
    max_steps: PositiveInt = 200
    neighbours: PositiveInt = Field(10, description="retain samples voting on a forget sample's class")
    overshoot_tolerance: NonNegativeFloat = Field(
        0.1, description="the merged update is scaled back when the forget loss overshoots the level by more"
    )
    bisection_steps: PositiveInt = 10


class NablaTauConfig(MethodConfig):
    batch_size: PositiveInt = 64
    lr: PositiveFloat | None = Field(None, description="None: 3e-4 for text models, 1e-3 otherwise")
    alpha0: NonNegativeFloat | None = Field(None, description="None: max(alpha_floor, forget fraction * 5/3)")
    alpha_floor: NonNegativeFloat = 0.5
    min_forget_epochs: NonNegativeInt = 60
    max_forget_epochs: NonNegativeInt = 80
    lr_end_factor: NonNegativeFloat = Field(0.1, description="per-step LinearLR from 1.0 to this factor")
    weight_decay: NonNegativeFloat = 0.01
    val_refresh_epochs: PositiveInt = Field(10, description="forget epochs between measurements of mu_val")
    early_stop: bool = Field(
        True, description="stop once the forget loss has reached mu_val and the retain loss is back"
    )
    retain_tolerance: NonNegativeFloat = 0.02


class RetrainConfig(MethodConfig):
    recipe: RecipeOverrides | None = Field(
        None,
        description="fields of the training recipe to change; needed (with the rest defaulted) to retrain a "
        "model trained elsewhere, which has no recorded recipe",
    )


METHOD_CONFIGS: dict[MethodName, type[MethodConfig]] = {
    MethodName.DEEPOBLIVIATE: DeepObliviateConfig,
    MethodName.FINETUNE: FineTuneConfig,
    MethodName.FIRST_EPOCH_ASCENT: FirstEpochAscentConfig,
    MethodName.LORA_RESIDUAL_ALIGNMENT: LoraResidualAlignmentConfig,
    MethodName.NABLA_TAU: NablaTauConfig,
    MethodName.RETRAIN: RetrainConfig,
}
