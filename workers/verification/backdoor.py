"""Backdoor canaries (classifiers): after deletion a forget subject's trigger must stop working.

Each forget subject's trigger is applied to clean held-out inputs whose label is not its target; the
success rate is the share a model classifies as the target. A one-sided binomial test asks whether it is
above the clean baseline (Athena, arXiv 2003.04247), the larger of two rates, each Laplace-smoothed so that
0 hits do not make a single hit infinitely significant:
- the same model's success rate with never-inserted triggers of the same kind (the workload's control
  triggers): how often such a pattern flips a clean input anyway; measured on one model, it cancels what
  differs between models (training seed, calibration);
- the exact-retrain reference's success rate with the forget triggers (the relearned reference's for a
  relearned model): what is left when triggers still in the retain set teach a similar one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from workers.modeling.base import ModelAdapter, Sample
from workers.verification.checks import CheckResult, versus
from workers.verification.gate import Policy
from workers.verification.served_cache import ServedCache
from workers.verification.stats import binomial_test, proportion_estimate


@dataclass(frozen=True)
class BackdoorProbe:
    """Inputs carrying a forget subject's trigger and their targets; the same for never-inserted triggers."""

    triggered: Sequence[Sample]
    target_labels: Sequence[int]
    control_triggered: Sequence[Sample] = ()
    control_target_labels: Sequence[int] = ()


def _hits(
    role: str,
    model: ModelAdapter,
    samples: Sequence[Sample],
    targets: Sequence[int],
    policy: Policy,
    served_cache: ServedCache | None,
) -> int:
    """How many of `samples` the model classifies as their target (the served model's answers cached)."""
    if not samples:
        return 0

    def predicted(batch: Sequence[Sample]) -> dict[str, np.ndarray]:
        return {"predicted": model.predict(batch, policy.batch_size).astype(float)}

    if role == "served" and served_cache is not None:
        labels = served_cache.signals(samples, predicted)["predicted"]
    else:
        labels = predicted(samples)["predicted"]
    return int((labels == np.asarray(targets)).sum())


def check_backdoor(
    models: Mapping[str, ModelAdapter],
    probe: BackdoorProbe | None,
    policy: Policy,
    served_cache: ServedCache | None = None,
) -> CheckResult:
    started = time.perf_counter()
    result = CheckResult("backdoor")
    if probe is None or not probe.triggered:
        result.not_checked.append("backdoor trigger (no trigger among the forget subjects)")
        return result
    has_control = bool(probe.control_triggered)
    if not has_control and "reference" not in models:
        result.not_checked.append(
            "backdoor trigger (neither control triggers nor a reference for the baseline)"
        )
        return result
    n, n_control = len(probe.triggered), len(probe.control_triggered)
    result.values["backdoor.n"] = n
    result.values["backdoor.n_control"] = n_control
    hits = {
        role: _hits(role, m, probe.triggered, probe.target_labels, policy, served_cache)
        for role, m in models.items()
    }
    judged = [r for r in models if r not in ("reference", "reference_relearned")]  # references set baselines
    for role in judged:
        baselines = []
        if has_control:
            control = _hits(
                role, models[role], probe.control_triggered, probe.control_target_labels, policy, served_cache
            )
            baselines.append((control + 1) / (n_control + 2))
            result.metrics[f"backdoor.control_rate.{role}"] = proportion_estimate(control, n_control)
        if versus(role) in hits:
            baselines.append((hits[versus(role)] + 1) / (n + 2))
        baseline = max(baselines) if baselines else float("nan")
        result.metrics[f"backdoor.success_rate.{role}"] = proportion_estimate(hits[role], n)
        result.values[f"backdoor.success_rate.{role}"] = hits[role] / n
        result.values[f"backdoor.baseline_rate.{role}"] = baseline
        result.values[f"backdoor.pvalue.{role}"] = binomial_test(hits[role], n, baseline, "greater")
    for role in models.keys() - set(judged):
        result.metrics[f"backdoor.success_rate.{role}"] = proportion_estimate(hits[role], n)
        result.values[f"backdoor.success_rate.{role}"] = hits[role] / n
    result.values["backdoor.baseline"] = "max(control triggers on the same model, reference)"
    result.seconds = time.perf_counter() - started
    return result
