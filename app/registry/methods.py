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
    SISA = "sisa"


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


class TargetedConfig(MethodConfig):
    """Settings of the methods that aim each forget sample at its own target loss
    (workers/unlearning/targets.py): first_epoch_ascent, lora_residual_alignment, nabla_tau."""

    targeting_references: NonNegativeInt = Field(
        4,
        multiple_of=2,
        description="subject-half references the per-sample targets come from (each subject out of half "
        "of them), trained once per lineage with seeds disjoint from the gate's; 0: the validation-"
        "quantile fallback even when a training record exists",
    )
    target_reach: float = Field(
        0.9,
        gt=0,
        le=1,
        description="forgotten once mean_i min(loss_i, t_i) reaches this share of mean_i t_i (a sample past "
        "its target counts only up to it)",
    )
    overshoot_tolerance: NonNegativeFloat = Field(
        0.25, description="never leave the forget set's mean loss above (1 + this) times its mean target"
    )
    relearn_steps: NonNegativeInt = Field(
        20,
        description="after unlearning, steps of retain-only fine-tuning on every parameter the method "
        "changed; when the forget set falls back below target_reach the method continues from the "
        "relearned weights (bounded rounds; 0: no check)",
    )
    fallback_quantile: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="without targeting references (no training record): the target is this quantile of "
        "the served model's validation losses of the sample's class",
    )


class DeepObliviateConfig(MethodConfig):
    early_stop: bool = Field(
        False,
        description="stop once the residual memory has decayed and stitch the rest on (approximate); off: "
        "an exact restart. Off by default: the residual decays only under a decaying learning rate "
        "(recipe lr_decay), and on digits stitching then cost up to 1.9 accuracy points",
    )
    eps: NonNegativeFloat = Field(
        0.01, description="early stop when the fitted decay slope falls below this, per block"
    )
    max_residual: NonNegativeFloat = Field(
        0.2,
        description="... and the fitted residual is below this share of the first retrained block's "
        "original update",
    )
    min_blocks: PositiveInt = Field(4, description="retrained blocks before the first fit")


class FineTuneConfig(MethodConfig):
    """A few steps, as the gate's calibration asks; the learning rate one would pick to polish a model."""

    steps: NonNegativeInt = 20
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 0.0


class FirstEpochAscentConfig(TargetedConfig):
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
    rounds: PositiveInt = Field(
        3, description="ascent-and-repair rounds at most (another while the targets are not reached)"
    )


class LoraResidualAlignmentConfig(TargetedConfig):
    rank: PositiveInt = 8
    lora_alpha: PositiveInt = 16
    lr: PositiveFloat = 1e-3
    batch_size: PositiveInt = 32
    forget_weight: NonNegativeFloat = Field(
        1.0, description="lambda: weight of the forget features' distance"
    )
    max_steps: PositiveInt = 200
    neighbours: PositiveInt = Field(10, description="retain samples voting on a forget sample's class")
    bisection_steps: PositiveInt = Field(
        10, description="bisection steps scaling the merged update back to where the targets are reached"
    )
    relearn_rounds: NonNegativeInt = Field(
        2, description="further alignments from the relearned weights when the relearning check fails"
    )


class NablaTauConfig(TargetedConfig):
    batch_size: PositiveInt = 64
    lr: PositiveFloat | None = Field(None, description="None: 3e-4 for text models, 1e-3 otherwise")
    alpha0: NonNegativeFloat | None = Field(None, description="None: max(alpha_floor, forget fraction * 5/3)")
    alpha_floor: NonNegativeFloat = 0.5
    min_forget_epochs: NonNegativeInt = 60
    max_forget_epochs: NonNegativeInt = 80
    lr_end_factor: NonNegativeFloat = Field(0.1, description="per-step LinearLR from 1.0 to this factor")
    weight_decay: NonNegativeFloat = 0.01
    early_stop: bool = Field(
        True, description="stop once the forget set has reached its targets and the retain loss is back"
    )
    retain_tolerance: NonNegativeFloat = 0.02
    relearn_rounds: NonNegativeInt = Field(
        2, description="further ascents from the relearned weights when the relearning check fails"
    )


class RetrainConfig(MethodConfig):
    recipe: RecipeOverrides | None = Field(
        None,
        description="fields of the training recipe to change; needed (with the rest defaulted) to retrain a "
        "model trained elsewhere, which has no recorded recipe",
    )


class SisaConfig(MethodConfig):
    """Nothing to tune: the layout (shards and slices) was chosen when the version was trained."""


METHOD_CONFIGS: dict[MethodName, type[MethodConfig]] = {
    MethodName.DEEPOBLIVIATE: DeepObliviateConfig,
    MethodName.FINETUNE: FineTuneConfig,
    MethodName.FIRST_EPOCH_ASCENT: FirstEpochAscentConfig,
    MethodName.LORA_RESIDUAL_ALIGNMENT: LoraResidualAlignmentConfig,
    MethodName.NABLA_TAU: NablaTauConfig,
    MethodName.RETRAIN: RetrainConfig,
    MethodName.SISA: SisaConfig,
}
