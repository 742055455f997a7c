"""The interface every unlearning method implements, and the registry that finds them by name."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from workers.modeling.base import ModelAdapter, Sample

# progress(fraction 0..1, message) — the pipeline turns it into job progress, the CLI into a bar.
ProgressCallback = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:  # noqa: ARG001 - default callback
    return None


class MethodUnavailable(RuntimeError):
    """The method cannot run on this version (e.g. no block checkpoints); the message says why."""


@dataclass
class UnlearningContext:
    """What a method may use beyond the served model and the three sample sets.

    `training` is the provenance of the served version when the service trained it itself
    (`workers.modeling.training.TrainingRecord`), or None for a model trained elsewhere.
    """

    training: Any | None = None
    seed: int = 0
    progress: ProgressCallback = no_progress


@dataclass
class UnlearningResult:
    adapter: ModelAdapter
    method: str
    exact: bool  # True when the result equals retraining without the forget set by construction
    seconds: float
    steps: list[dict[str, float]] = field(default_factory=list)  # per-step statistics
    details: dict[str, Any] = field(default_factory=dict)


class UnlearningMethod(ABC):
    name: ClassVar[str]
    exact: ClassVar[bool] = False

    def __init__(self, **config: Any) -> None:
        self.config = {**self.default_config(), **config}

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {}

    def check_available(self, adapter: ModelAdapter, context: UnlearningContext) -> None:  # noqa: B027
        """Raise MethodUnavailable with a clear reason when the method cannot run here."""

    @abstractmethod
    def run(
        self,
        adapter: ModelAdapter,
        forget: Sequence[Sample],
        retain: Sequence[Sample],
        validation: Sequence[Sample],
        context: UnlearningContext,
    ) -> UnlearningResult:
        """Produce the candidate. Must not modify `adapter` in place (work on a clone)."""

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
        self.check_available(adapter, context)
        started = time.perf_counter()
        result = self.run(adapter, forget, retain, validation, context)
        result.seconds = time.perf_counter() - started
        context.progress(1.0, f"{self.name} done")
        return result


METHODS: dict[str, type[UnlearningMethod]] = {}


def register(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str, **config: Any) -> UnlearningMethod:
    import workers.unlearning  # noqa: F401 - importing the package registers every method

    try:
        return METHODS[name](**config)
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise KeyError(f"unknown unlearning method {name!r}; known: {known}") from None


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
