"""Backdoor canaries (classifiers): after deletion a forget subject's trigger must stop working.

Each forget subject's trigger is applied to clean held-out inputs whose label is not its target; its
success rate is the share a model classifies as the target (Athena, arXiv 2003.04247). The gated statistic
is the EXCESS: the forget triggers' mean success rate minus the same model's rate with never-inserted
triggers of the same kind (the workload's control triggers), which cancels what a model does with any odd
pixel pattern (training seed, calibration).

Where exact retrains land: a subject-half reference that never saw subject s never saw its trigger, so the
references OUT for s give the excess of s's trigger under exact retrains, subject by subject; the null of
the forget set's mean excess is assembled from them (workers.verification.retrain_null). A trigger's rate
is a property of the whole model, shared by all its inputs, so a binomial test over inputs would treat 60
correlated inputs as independent; the per-subject null does not. Without references the binomial test
against the control rate is what is left, and the report says so.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from workers.modeling.base import ModelAdapter, Sample
from workers.verification.checks import CheckResult
from workers.verification.gate import Policy
from workers.verification.references import ReferenceSet
from workers.verification.retrain_null import RetrainNull, SubjectDraws, assemble, pair_correlation
from workers.verification.served_cache import ServedCache
from workers.verification.stats import Estimate, binomial_test, proportion_estimate


@dataclass(frozen=True)
class BackdoorProbe:
    """Inputs carrying a forget subject's trigger and their targets; the same for never-inserted triggers.

    `owners`: the subject whose trigger each input carries (aligned with `triggered`)."""

    triggered: Sequence[Sample]
    target_labels: Sequence[int]
    control_triggered: Sequence[Sample] = ()
    control_target_labels: Sequence[int] = ()
    owners: Sequence[str] = ()


def _aimed(samples: Sequence[Sample], targets: Sequence[int]) -> list[Sample]:
    """The inputs labelled with their trigger's target: "correct" then means "the trigger worked"."""
    return [
        replace(s, sample_id=f"{s.sample_id}|target:{t}", label=int(t))
        for s, t in zip(samples, targets, strict=True)
    ]


def _successes(
    model: ModelAdapter, samples: Sequence[Sample], policy: Policy, served_cache: ServedCache | None
) -> np.ndarray:
    """1 where the model classifies an aimed input as its target (`served_cache`: the served model's
    answers, cached for every deletion against the version)."""
    if not samples:
        return np.zeros(0)

    def predicted(batch: Sequence[Sample]) -> dict[str, np.ndarray]:
        labels = np.array([s.label for s in batch])
        return {"hit": (model.predict(batch, policy.batch_size) == labels).astype(float)}

    if served_cache is not None:
        return served_cache.signals(samples, predicted)["hit"]
    return predicted(samples)["hit"]


def check_backdoor(
    models: Mapping[str, ModelAdapter],
    probe: BackdoorProbe | None,
    policy: Policy,
    served_cache: ServedCache | None = None,
    refs: ReferenceSet | None = None,
) -> CheckResult:
    started = time.perf_counter()
    result = CheckResult("backdoor")
    if probe is None or not probe.triggered:
        result.not_checked.append("backdoor trigger (no trigger among the forget subjects)")
        return result
    if not probe.control_triggered:
        result.not_checked.append("backdoor trigger (no never-inserted control trigger for the baseline)")
        return result
    inputs = _aimed(probe.triggered, probe.target_labels)
    controls = _aimed(probe.control_triggered, probe.control_target_labels)
    owners = np.asarray(probe.owners) if len(probe.owners) else np.full(len(inputs), "forget")
    n, n_control = len(inputs), len(controls)
    result.values["backdoor.n"] = n
    result.values["backdoor.n_control"] = n_control
    result.values["backdoor.triggers"] = int(np.unique(owners).size)
    judged = [r for r in models if r not in ("reference",)]
    for role in judged:
        cache = served_cache if models[role] is models.get("served") else None
        hits = _successes(models[role], inputs, policy, cache)
        control = _successes(models[role], controls, policy, cache)
        control_rate = float(control.mean())
        per_subject = {s: float(hits[owners == s].mean()) for s in dict.fromkeys(owners.tolist())}
        excess = float(np.mean([rate - control_rate for rate in per_subject.values()]))
        result.metrics[f"backdoor.success_rate.{role}"] = proportion_estimate(int(hits.sum()), n)
        result.metrics[f"backdoor.control_rate.{role}"] = proportion_estimate(int(control.sum()), n_control)
        result.metrics[f"backdoor.excess.{role}"] = Estimate(excess, excess, excess, n)
        result.values[f"backdoor.success_rate.{role}"] = float(hits.mean())
        result.values[f"backdoor.baseline_rate.{role}"] = control_rate
        result.values[f"backdoor.per_trigger.{role}"] = per_subject
        smoothed = (control.sum() + 1) / (n_control + 2)  # 0 control hits must not make 1 hit decisive
        result.values[f"backdoor.pvalue.{role}"] = binomial_test(int(hits.sum()), n, smoothed, "greater")
    if refs is not None:
        null, correlation = _retrain_null(refs, inputs, controls, owners, policy)
        result.values["backdoor.excess.null"] = null
        result.values["backdoor.excess.subject_correlation"] = correlation
        if null is None:
            result.not_checked.append("backdoor null (a forget subject has < 2 OUT references)")
    else:
        result.not_checked.append(
            "backdoor null of exact retrains (no references): binomial test over inputs"
        )
    result.values["backdoor.baseline"] = "the same model's rate with never-inserted control triggers"
    result.seconds = time.perf_counter() - started
    return result


def _retrain_null(
    refs: ReferenceSet,
    inputs: Sequence[Sample],
    controls: Sequence[Sample],
    owners: np.ndarray,
    policy: Policy,
) -> tuple[RetrainNull | None, float]:
    """Per forget subject, its trigger's excess under each reference that never saw the subject."""
    hits = refs.correct([*inputs, *controls], policy.batch_size)[: refs.k]
    trigger_hits, control_hits = hits[:, : len(inputs)], hits[:, len(inputs) :]
    control_rate = control_hits.mean(axis=1)
    column = {s: i for i, s in enumerate(refs.subjects)}
    subjects = list(dict.fromkeys(owners.tolist()))
    if any(s not in column for s in subjects):  # a trigger whose owner the references do not know
        return None, float("nan")
    out = ~refs.subject_in[:, [column[s] for s in subjects]]
    table = np.array(
        [[trigger_hits[j, owners == s].mean() - control_rate[j] for s in subjects] for j in range(refs.k)]
    )
    correlation = pair_correlation(table, out, min_pairs=10)
    draws = [SubjectDraws(s, 1.0, table[out[:, i], i]) for i, s in enumerate(subjects)]
    return assemble(draws, correlation), correlation
