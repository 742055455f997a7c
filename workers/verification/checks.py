"""What every check hands to the gate and the report: named estimates, plain values, and what it skipped.

Metric names are `<family>.<metric>.<role>` for one model and `<family>.<metric>.<a>-<b>` for a paired
difference between two models. Roles: served (the untouched version), candidate, relearned (the candidate
after the relearning probe) and, when the caller has one, reference (an exact retrain with the served
version's seed: reported beside the others, the gate judges with its own references).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.modeling.base import Sample
from workers.verification.stats import Estimate

# (model, what it is compared with): the paired differences reported when a reference model is scored
FORGET_PAIRS = (("candidate", "reference"), ("served", "reference"))


def metric_name(family: str, metric: str, role: str, other: str | None = None) -> str:
    return f"{family}.{metric}.{role}" if other is None else f"{family}.{metric}.{role}-{other}"


@dataclass
class CheckResult:
    name: str
    metrics: dict[str, Estimate] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)  # p-values, counts, per-item lists
    not_checked: list[str] = field(default_factory=list)
    seconds: float = 0.0
    plot_data: dict[str, Any] = field(default_factory=dict)  # arrays for the plots, not in the JSON

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "values": _jsonable(self.values),
            "not_checked": list(self.not_checked),
            "seconds": round(self.seconds, 3),
        }


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class EvalSets:
    """The samples every model is scored on: the whole forget set, capped retain and held-out samples."""

    forget: list[Sample]
    retain: list[Sample]
    heldout: list[Sample]

    @property
    def all(self) -> list[Sample]:
        return [*self.forget, *self.retain, *self.heldout]

    def split(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """Cut an array aligned with `all` (last axis) into forget / retain / heldout parts."""
        a, b = len(self.forget), len(self.forget) + len(self.retain)
        return {"forget": values[..., :a], "retain": values[..., a:b], "heldout": values[..., b:]}

    def counts(self) -> dict[str, int]:
        return {"forget": len(self.forget), "retain": len(self.retain), "heldout": len(self.heldout)}


# role -> split -> signal name -> per-sample values
SplitSignals = dict[str, dict[str, np.ndarray]]


def split_signals(sets: EvalSets, signals: dict[str, np.ndarray]) -> SplitSignals:
    out: SplitSignals = {"forget": {}, "retain": {}, "heldout": {}}
    for name, values in signals.items():
        for part, cut in sets.split(np.asarray(values)).items():
            out[part][name] = cut
    return out


def stable_subsample(samples: Sequence[Sample], cap: int) -> list[Sample]:
    """At most `cap` samples chosen by a hash of their ids, so that later deletions against the same version
    pick (nearly) the same samples and find their reference losses in the cache."""
    if len(samples) <= cap:
        return list(samples)
    import hashlib

    def rank(s: Sample) -> str:
        return hashlib.sha256(s.sample_id.encode()).hexdigest()

    keep = set(sorted(range(len(samples)), key=lambda i: rank(samples[i]))[:cap])
    return [s for i, s in enumerate(samples) if i in keep]
