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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, create_model

from app.names import Name
from app.registry.methods import AUTO, METHOD_CONFIGS, MethodChoice, MethodConfig, MethodName
from app.registry.overrides import apply_overrides, overrides_model
from app.registry.recipe import RecipeOverrides
from app.registry.training_params import TrainingParams
from app.registry.workload_sizes import WorkloadSize

DEFAULT_ALIAS = "production"


# The gate's settings; the rules that read them are workers/verification/gate.py (which calls it `Policy`).
# The defaults are the calibrated gate of VERIFICATION.md; the false-rejection and false-acceptance rates
# they give are measured in docs/benchmarks.md ("Gate operating characteristics", bench/gate.py).
@dataclass(frozen=True)
class GatePolicy:
    """Thresholds and measurement settings of the gate for one model. Defaults: the calibrated gate."""

    # -- forgetting rules against the null of exact retrains (workers.verification.retrain_null)
    # one-sided level of each rule's prediction bound: about ten rules per deletion keep an exact retrain's
    # chance of failing any at most 5 % when the nulls are right
    null_alpha: float = 0.005
    mia_auc_tolerance: float = 0.03  # a remembering AUC must also exceed the null's mean by this much
    mia_auc_over_unlearning: float = 0.05  # ... an over-unlearned one fall this far below the null's mean
    # lower-tail level, stricter: full-data retrains land below the half-data null (retrain_null.py)
    over_unlearning_alpha: float = 0.001
    per_example_tolerance: float = 0.5  # mean per-example LiRA score above the null's mean (sd units)
    per_example_clip: float = 6.0  # each sample's score clipped to +-this: no single sample decides
    backdoor_tolerance: float = 0.05  # trigger success (beyond the control rate) above the null's mean
    gate_fpr: float = 0.01  # the FPR at which TPR is reported
    # -- retain exposure and utility against the seed spread of full-data models (served + replicas)
    retain_auc_tolerance: float = 0.02  # retain-vs-held-out AUC above the served version's
    min_accuracy_ratio: float = 0.99  # accuracy ratio to the served version below which a drop is material
    max_perplexity_ratio: float = 1.05  # perplexity ratio above which a rise is material
    # -- planted signals
    canary_exposure_tolerance_bits: float = 0.0  # deleted canaries' mean exposure over never-inserted ones'
    canary_alpha: float = 0.005  # significance of the deleted canaries' exposure (Fisher, uniform-rank null)
    # -- decisions
    trust_exact: bool = True  # exact methods: utility decides, "exact by construction"
    # with trust_exact, score an exact candidate by the forgetting checks too (LiRA against the references,
    # canaries, triggers): numbers for the report that decide nothing, at the cost of loading every
    # reference again for the new forget samples (minilm sharded: 37 s against 2 s of unlearning)
    exact_evidence: bool = False
    # samples (of the split a rule reads: held-out, retain) below which the rule is not checked: no pass
    # without measurement. Low on purpose: a customer's small held-out set (the bring-your-own-model
    # examples verify on 6) still gets its model's utility checked, with the wide cluster-bootstrap
    # intervals the report shows; n = 0 (no held-out data) is never read as a pass
    min_samples: int = 5
    # -- the gate's references (workers.verification.references), trained once per lineage
    # each subject OUT of at least this many subject-half references: the spread of exact retrains per subject
    min_out_references: int = 8
    lira_references: int = 0  # subject-half references; 0: 2 * min_out_references
    seed_replicas: int = 4  # full-data seed replicas: the spread of utility and retain exposure
    # cost limit of a reference set, in trainings of the model (0: none); above it the set shrinks and the
    # report says so
    max_reference_trainings: float = 0.0
    # refresh rule: a lineage's set serves later versions until this share of its subjects is deleted
    reference_refresh_share: float = 0.1
    # -- measurement
    fprs: tuple[float, ...] = (0.01, 0.001)
    n_boot: int = 1000
    seed: int = 0
    retain_cap: int = 512  # retain samples scored (a stable subsample)
    heldout_cap: int = 512
    max_canary_candidates: int = 256  # candidates per canary: exposure at most 8 bits, p >= 2^-8 per canary
    max_kept_canaries: int = 1  # canaries of retained subjects scored as a collateral-damage view
    relearn: bool = True
    relearn_steps: int = 20
    relearn_lr: float = 1e-3
    relearn_batch_size: int = 16
    batch_size: int = 64

    def references(self) -> int:
        """Subject-half references asked for: an even number, each subject OUT of half of them."""
        k = self.lira_references or 2 * self.min_out_references
        return k + (k % 2)

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
    size: WorkloadSize = "small"
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
