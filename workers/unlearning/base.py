"""The interface every unlearning method implements, the facts it declares, and the registry by name.

A method declares what the pipeline and the gate need to know about it as class attributes (whether its
result is exact, what provenance it needs, which tasks it runs on, whether it records provenance in a work
folder), and its settings are its config class in app/registry/methods.py. The base class does what every
method needs around its `run`: the availability checks its facts imply, seeding, a copy of the served
model to work on, timing and the final progress report.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from app.registry.methods import METHOD_CONFIGS, MethodConfig, MethodName
from workers.modeling.adapters.sharded import ShardedAdapter
from workers.modeling.base import TASKS, ModelAdapter, Sample, seed_everything

# progress(fraction 0..1, message) — the pipeline turns it into job progress, the CLI into a bar.
ProgressCallback = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:  # noqa: ARG001 - default callback
    return None


class MethodUnavailable(RuntimeError):
    """The method cannot run on this version (e.g. no block checkpoints); the message says why."""


class Provenance(StrEnum):
    """What a method may need from the served version's training run (`UnlearningContext.training`)."""

    BLOCK_CHECKPOINTS = "block checkpoints"
    FIRST_EPOCH_GRADIENTS = "first-epoch gradients"
    RECIPE = "training recipe"  # from the training record, or given in the method's config
    SHARDS = "a sharded layout"  # trained in shards and slices (SISA), each member with its checkpoints


@dataclass
class UnlearningContext:
    """What a method may use beyond the served model and the three sample sets.

    `training` is the provenance of the served version when the service trained it itself
    (`workers.modeling.training.TrainingRecord`), or None for a model trained elsewhere. `workdir` is where
    a method that records provenance (`records_provenance`) writes the record of its result. `targeting`
    (a `workers.unlearning.targets.TargetingSource`) says which record of the lineage the targeting
    references are trained from and where they are cached; None: from `training`, under the cache root.
    """

    training: Any | None = None
    seed: int = 0
    progress: ProgressCallback = no_progress
    workdir: Path | str | None = None
    targeting: Any | None = None


class DeletionSets(NamedTuple):
    """The samples a run sees: what to forget, what to keep, and held-out data to measure itself on."""

    forget: Sequence[Sample]
    retain: Sequence[Sample]
    validation: Sequence[Sample]


@dataclass
class UnlearningResult:
    adapter: ModelAdapter
    method: str = ""  # filled in by UnlearningMethod.unlearn
    # True when the result equals retraining without the forget set by construction; left None by a
    # method's run, it is the method's `is_exact`
    exact: bool | None = None
    seconds: float = 0.0  # filled in by UnlearningMethod.unlearn
    steps: list[dict[str, float]] = field(default_factory=list)  # per-step statistics
    details: dict[str, Any] = field(default_factory=dict)


class UnlearningMethod(ABC):
    name: ClassVar[MethodName]
    # The result equals retraining without the forget set by construction (under the default config;
    # `is_exact` answers for this instance's config).
    exact: ClassVar[bool] = False
    # Provenance the method cannot run without under the default config (`required_provenance`: under
    # this instance's); checked before `run`.
    needs: ClassVar[frozenset[Provenance]] = frozenset()
    tasks: ClassVar[frozenset[str]] = frozenset(TASKS)
    # Writes a TrainingRecord of its result under `context.workdir` (details["training_record"]), so that
    # the new version can itself be unlearned by the methods that need provenance.
    records_provenance: ClassVar[bool] = False
    # `run` gets a copy of the served model (False: the method builds its own and must not touch it).
    works_on_copy: ClassVar[bool] = True
    # Why the method does not run on a sharded (SISA) model, or None when it does.
    not_on_sharded: ClassVar[str | None] = None

    def __init__(self, **config: Any) -> None:
        # the method's settings: unknown keys and wrong types are a pydantic ValidationError (a ValueError)
        self.config: MethodConfig = config_class(self.name).model_validate(config)

    @property
    def is_exact(self) -> bool:
        """Whether this instance's result is exact by construction (a config may make it approximate)."""
        return self.exact

    @property
    def required_provenance(self) -> frozenset[Provenance]:
        """The provenance this instance cannot run without (some configs need more, or less)."""
        return self.needs

    def check_available(self, adapter: ModelAdapter, context: UnlearningContext) -> None:  # noqa: B027
        """Raise MethodUnavailable with a clear reason when the method cannot run here (beyond the checks
        the declared facts imply)."""

    @abstractmethod
    def run(self, model: ModelAdapter, sets: DeletionSets, context: UnlearningContext) -> UnlearningResult:
        """Produce the candidate from `model`: a copy of the served model, or the served model itself when
        `works_on_copy` is off (then it must not be modified)."""

    def unlearn(
        self,
        adapter: ModelAdapter,
        forget: Sequence[Sample],
        retain: Sequence[Sample],
        validation: Sequence[Sample],
        context: UnlearningContext | None = None,
    ) -> UnlearningResult:
        context = context or UnlearningContext()
        if not forget:
            raise ValueError("the forget set is empty: nothing to unlearn")
        self._check_facts(adapter, context)
        self.check_available(adapter, context)
        started = time.perf_counter()
        seed_everything(context.seed)
        model = adapter.clone() if self.works_on_copy else adapter
        result = self.run(model, DeletionSets(forget, retain, validation), context)
        result.adapter.model.eval()
        result.method = str(self.name)
        result.exact = self.is_exact if result.exact is None else result.exact
        result.seconds = time.perf_counter() - started
        context.progress(1.0, f"{self.name} done")
        return result

    def _check_facts(self, adapter: ModelAdapter, context: UnlearningContext) -> None:
        if adapter.task not in self.tasks:
            raise MethodUnavailable(
                f"{self.name} does not unlearn a {adapter.task} model (it runs on: "
                f"{', '.join(sorted(self.tasks))}); see its module for why"
            )
        if isinstance(adapter, ShardedAdapter) and self.not_on_sharded:
            raise MethodUnavailable(f"{self.name} does not run on a sharded model: {self.not_on_sharded}")
        needs, record = self.required_provenance, context.training
        if Provenance.RECIPE in needs and record is None:
            raise MethodUnavailable(
                f"{self.name} needs the served version's training recipe: this model has no training record "
                "(trained elsewhere); give it config recipe={...} (a TrainingRecipe; in a model policy: "
                "retrain_recipe) to run it from scratch"
            )
        if Provenance.SHARDS in needs and (record is None or not getattr(record, "num_shards", 0)):
            raise MethodUnavailable(
                f"{self.name} needs a version trained in shards (training params layout.shards > 1); "
                + ("this model was trained elsewhere" if record is None else "this one was trained unsharded")
            )
        if Provenance.BLOCK_CHECKPOINTS in needs:
            if getattr(record, "num_shards", 0):
                raise MethodUnavailable(
                    f"{self.name} restarts one training run; this version is sharded: its members' "
                    "checkpoints are for sisa"
                )
            if record is None:
                raise MethodUnavailable(
                    f"{self.name} needs the block checkpoints of the training run; this model was trained "
                    "elsewhere (no training record), use a method that needs none or retrain"
                )
            if not record.has_checkpoints:
                raise MethodUnavailable(
                    f"{self.name} needs block checkpoints, but this version was trained without them "
                    "(recipe.record_block_checkpoints was off)"
                )
        if Provenance.FIRST_EPOCH_GRADIENTS in needs and not has_first_epoch_gradients(record):
            raise MethodUnavailable(
                f"{self.name} needs the first-epoch gradients recorded while training "
                "(recipe.record_first_epoch_grads); this version has none"
            )


def has_first_epoch_gradients(record: Any | None) -> bool:
    return record is not None and getattr(record, "has_first_epoch_grads", False)


def config_class(name: str) -> type[MethodConfig]:
    return METHOD_CONFIGS[MethodName(name)]


METHODS: dict[str, type[UnlearningMethod]] = {}


def register(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    METHODS[str(cls.name)] = cls
    return cls


def method_class(name: str) -> type[UnlearningMethod]:
    """The registered class of `name`; KeyError naming the known methods for any other name."""
    import workers.unlearning  # noqa: F401 - importing the package registers every method

    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise KeyError(f"unknown unlearning method {name!r}; known: {known}") from None


def get_method(name: str, **config: Any) -> UnlearningMethod:
    return method_class(name)(**config)


def unlearn(
    method: str,
    adapter: ModelAdapter,
    forget: Sequence[Sample],
    retain: Sequence[Sample],
    validation: Sequence[Sample],
    context: UnlearningContext | None = None,
    config: Mapping[str, Any] | None = None,
) -> UnlearningResult:
    """`unlearn(adapter, forget, retain, validation, config) -> result` by method name."""
    return get_method(method, **dict(config or {})).unlearn(adapter, forget, retain, validation, context)
