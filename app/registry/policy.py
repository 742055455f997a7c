"""A model's policy: the alias it serves, how its deletions are unlearned, how the gate judges them.

Validated when a model is registered or changed (POST /v1/models, PATCH /v1/models/{model}): an unknown or
misspelled key at any depth, a method the workers do not run or a setting of the wrong type is a 422
naming it, so it cannot fail a job at verification later. The stored policy holds what the operator set
and nothing else (`stored_policy`); the workers read it back through `model_policy`, defaults filled in.

Torch-free and free of the database: the workers' engine imports the gate's settings from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, create_model

from app.names import Name
from app.registry.methods import AUTO, METHOD_CONFIGS, MethodChoice, MethodConfig, MethodName
from app.registry.overrides import apply_overrides, overrides_model
from app.registry.recipe import RecipeOverrides
from app.registry.training_params import TrainingParams

DEFAULT_ALIAS = "production"

# LiRA reference models per task in the default policy: each costs about half a training run, once per
# served version. The fixed-variance LiRA test works from 2; the spread of exact retrains needs 8 (see
# workers.verification.mia.retrain_band), affordable on the small classifiers, not yet on the text models.
DEFAULT_LIRA_REFERENCES = {"image-classification": 8, "sequence-classification": 4, "causal-lm": 4}


# The gate's settings; the rules that read them are workers/verification/gate.py (which calls it `Policy`).
@dataclass(frozen=True)
class GatePolicy:
    """Thresholds and measurement settings of the gate for one model. Defaults: the starting gate."""

    # -- membership inference, forget vs held-out, candidate minus retrain reference
    mia_auc_tolerance: float = 0.03  # candidate AUC may exceed the reference's by this much
    mia_auc_over_unlearning: float = 0.05  # ... and fall below it by this much (over-unlearning is a tell)
    mia_tpr_tolerance: float = 0.02  # TPR at `gate_fpr`
    gate_fpr: float = 0.01
    # -- membership inference, retain vs held-out, candidate minus served: unlearning must not expose others
    retain_auc_tolerance: float = 0.02
    # -- utility: accuracy (classifiers) or perplexity (language models) ratio to the exact-retrain reference,
    #    to the served version when there is no reference (see workers.verification.utility)
    min_accuracy_ratio: float = 0.99
    max_perplexity_ratio: float = 1.05
    # -- planted signals
    canary_exposure_tolerance_bits: float = 0.0  # deleted canaries' mean exposure over never-inserted ones'
    canary_alpha: float = 0.01  # significance of the deleted canaries' exposure (Fisher, uniform-rank null)
    backdoor_alpha: float = 0.01  # binomial test of the trigger success rate against the clean baseline
    # -- decisions
    trust_exact: bool = True  # exact methods: utility decides, "exact by construction"
    primary_attacks: tuple[str, ...] = ("lira", "ref_ratio", "loss")  # first available one is gated
    retrain_band_sds: float = 2.0  # exact retrains' spread: their range widened to mean +- this many sd
    min_band_models: int = 4  # fewer exact retrains than this say too little about their spread to use it
    # -- measurement
    fprs: tuple[float, ...] = (0.01, 0.001)
    n_boot: int = 1000
    seed: int = 0
    retain_cap: int = 512  # retain samples scored (a stable subsample)
    heldout_cap: int = 512
    lira_references: int = 0  # 0: DEFAULT_LIRA_REFERENCES for the task
    max_canary_candidates: int = 256  # candidates per canary: exposure at most 8 bits, p >= 2^-8 per canary
    max_kept_canaries: int = 1  # canaries of retained subjects scored as a collateral-damage view
    relearn: bool = True
    relearn_steps: int = 20
    relearn_lr: float = 1e-3
    relearn_batch_size: int = 16
    batch_size: int = 64

    def references_for(self, task: str) -> int:
        return self.lira_references or DEFAULT_LIRA_REFERENCES.get(task, 4)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GatePolicy:
        """A policy from stored overrides; unknown keys are an error, not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown policy settings: {', '.join(sorted(unknown))}")
        coerced = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**coerced)


GateOverrides = overrides_model(GatePolicy)

# One optional entry per method, named after it: settings of a method the workers do not run are refused.
MethodConfigs = create_model(
    "MethodConfigs",
    __config__=ConfigDict(extra="forbid", frozen=True),
    __doc__="Settings per method, keyed by its name; unset ones keep their defaults.",
    __module__=__name__,
    **{str(name): (config | None, None) for name, config in METHOD_CONFIGS.items()},
)


class ProbeSpec(BaseModel):
    """The reference workload the model was trained on: its planted signal (canaries, backdoors, rare
    phrases) gives the gate power where membership inference has none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workload: Name
    size: Literal["small", "full"] = "small"
    seed: NonNegativeInt = 0


class ModelPolicy(BaseModel):
    """How a model's deletions are handled; every key is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: Name = Field(DEFAULT_ALIAS, description="the alias whose version deletions unlearn and promote")
    method: MethodChoice = Field(
        AUTO, description="the first method to try when a request says `auto`; `auto`: chosen by the lineage"
    )
    chain: list[MethodName] | None = Field(
        None,
        min_length=1,
        description="the methods tried in order for `auto` requests, instead of the choice",
    )
    method_config: MethodConfigs = Field(default_factory=MethodConfigs)
    retrain_recipe: RecipeOverrides | None = Field(
        None, description="the recipe `retrain` uses for a model trained elsewhere (no recorded recipe)"
    )
    gate: GateOverrides = Field(default_factory=GateOverrides)
    probes: ProbeSpec | None = None
    training: TrainingParams | None = Field(
        None, description="defaults of POST .../versions:train: a request's params override them, key by key"
    )

    def config_of(self, method: str) -> dict[str, Any]:
        """The settings the policy gives `method`: only what it sets (the method fills in its defaults)."""
        config: MethodConfig | None = getattr(self.method_config, method, None)
        return config.model_dump(exclude_unset=True) if config is not None else {}

    def gate_policy(self) -> GatePolicy:
        return apply_overrides(GatePolicy, self.gate)

    def training_params(self, requested: TrainingParams) -> TrainingParams:
        """What a training request trains: its params over the policy's `training`, top-level key by key
        (a request's `recipe` replaces the policy's whole)."""
        defaults = self.training.model_dump(exclude_unset=True) if self.training is not None else {}
        return TrainingParams.model_validate({**defaults, **requested.model_dump(exclude_unset=True)})


def stored_policy(policy: ModelPolicy) -> dict[str, Any]:
    """What the database keeps: the keys the operator set, as JSON."""
    return policy.model_dump(mode="json", exclude_unset=True)


def model_policy(stored: Mapping[str, Any] | None) -> ModelPolicy:
    """A stored policy, validated again (a row written before validation existed fails here, by name)."""
    return ModelPolicy.model_validate(dict(stored or {}))
