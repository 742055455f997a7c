"""Utility: accuracy (classifiers) or perplexity (language models) on retain and held-out test data.

Each model's value has a cluster-bootstrap interval (subjects resampled). The gate holds the candidate
against where full-data models of other seeds land: the served version and its seed replicas
(workers.verification.references), scored on the same samples. One seed change moved held-out accuracy by
20 points on minilm (small), so no fixed ratio can stand for "as good as retraining"; the policy's ratio
is the material part of the rule, the seed spread the significant part. Without replicas the ratio
candidate / served and its interval decide. Perplexity is exp of the mean per-sample token loss.

An exact retrain also lacks the forgotten subjects' data, so it lands below full-data models by what that
data was worth: `deletion_shift`, read off the subject-half references (models on half of the subjects):
utility falls from the full-data models' mean to theirs over half of the subjects, and a deletion of a
share d of the subjects is expected to cost 2 d of that fall (linear between half and full data, a first-
order estimate). Measured where it mattered: deleting 5 of bios's subjects from a model trained in 4 shards
raised held-out perplexity from 26.3 to 30.3, beyond the seed spread of full-data models, for an exact
retrain. Held-out data only (the retain samples trained every candidate) and only ever towards "worse":
half-data models that do better would tighten the rule on a fluke.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from workers.verification.checks import CheckResult, EvalSets, SplitSignals, metric_name
from workers.verification.gate import Policy
from workers.verification.stats import mean_estimate, paired_difference

SPLITS = ("forget", "retain", "heldout")


def check_utility(
    signals: Mapping[str, SplitSignals],
    sets: EvalSets,
    is_lm: bool,
    policy: Policy,
    replicas: Mapping[str, np.ndarray] | None = None,
    halves: Mapping[str, np.ndarray] | None = None,
    deleted_share: float = 0.0,
) -> CheckResult:
    """`replicas`: the seed replicas' per-sample "loss" and "correct" [R, n] over `sets.all`; `halves`: the
    same of the subject-half references [K, n]; `deleted_share`: the share of the references' subjects
    this deletion removes."""
    started = time.perf_counter()
    result = CheckResult("utility")
    clusters = {part: [s.subject for s in getattr(sets, part)] for part in SPLITS}
    for role, by_split in signals.items():
        for split in SPLITS:
            values = by_split[split]
            if "loss" not in values or values["loss"].size == 0:
                continue
            nb, seed, c = policy.n_boot, policy.seed, clusters[split]
            result.metrics[metric_name("utility", f"loss_{split}", role)] = mean_estimate(
                values["loss"], nb, seed, clusters=c
            )
            if is_lm:
                result.metrics[metric_name("utility", f"perplexity_{split}", role)] = mean_estimate(
                    values["loss"], nb, seed, transform=np.exp, clusters=c
                )
            else:
                result.metrics[metric_name("utility", f"accuracy_{split}", role)] = mean_estimate(
                    values["correct"], nb, seed, clusters=c
                )
    _ratios(result, signals, clusters, is_lm, policy)
    _seed_spread(result, signals, sets, is_lm, replicas)
    _deletion_shift(result, sets, is_lm, halves, deleted_share)
    result.seconds = time.perf_counter() - started
    return result


def utility_value(loss: np.ndarray, correct: np.ndarray, is_lm: bool) -> float:
    """Perplexity (language models) or accuracy of one model on one split."""
    return float(np.exp(np.mean(loss))) if is_lm else float(np.mean(correct))


def _seed_spread(
    result: CheckResult,
    signals: Mapping[str, SplitSignals],
    sets: EvalSets,
    is_lm: bool,
    replicas: Mapping[str, np.ndarray] | None,
) -> None:
    if replicas is None or replicas["loss"].shape[0] == 0 or "served" not in signals:
        result.not_checked.append("seed spread of utility (no seed replicas): the fixed ratio decides")
        return
    metric = "perplexity" if is_lm else "accuracy"
    loss, correct = sets.split(replicas["loss"]), sets.split(replicas["correct"])
    for split in ("retain", "heldout"):
        served = signals["served"][split]
        if served["loss"].size == 0:
            continue
        spread = [utility_value(served["loss"], served.get("correct", np.zeros(0)), is_lm)]
        spread += [
            utility_value(loss[split][r], correct[split][r], is_lm) for r in range(loss[split].shape[0])
        ]
        result.values[f"utility.{metric}_{split}.seed_spread"] = spread


def _deletion_shift(
    result: CheckResult,
    sets: EvalSets,
    is_lm: bool,
    halves: Mapping[str, np.ndarray] | None,
    deleted_share: float,
) -> None:
    metric = f"{'perplexity' if is_lm else 'accuracy'}_heldout"
    full = result.values.get(f"utility.{metric}.seed_spread")
    if halves is None or halves["loss"].shape[0] == 0 or not full or deleted_share <= 0:
        return
    loss, correct = sets.split(halves["loss"])["heldout"], sets.split(halves["correct"])["heldout"]
    if loss.shape[1] == 0:
        return
    half = float(np.mean([utility_value(loss[j], correct[j], is_lm) for j in range(loss.shape[0])]))
    fall = half - float(np.mean(full))
    shift = 2 * deleted_share * (max(fall, 0.0) if is_lm else min(fall, 0.0))
    result.values[f"utility.{metric}.deletion_shift"] = shift
    result.values[f"utility.{metric}.half_data"] = half


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a / np.where(b == 0, np.nan, b)


def _ratios(
    result: CheckResult,
    signals: Mapping[str, SplitSignals],
    clusters: Mapping[str, list[str]],
    is_lm: bool,
    policy: Policy,
) -> None:
    """Paired ratios candidate / served (and the exact-retrain reference's, when one is scored)."""
    if is_lm:
        metric, signal = "perplexity", "loss"
        combine = lambda a, b: np.exp(a - b)  # noqa: E731 - ratio of exp(mean loss)
    else:
        metric, signal, combine = "accuracy", "correct", _ratio
    for a in ("candidate", "reference"):
        if a not in signals or "served" not in signals:
            continue
        for split in ("retain", "heldout"):
            if signals[a][split][signal].size == 0:
                continue
            result.metrics[metric_name("utility", f"{metric}_{split}", a, "served")] = paired_difference(
                signals[a][split][signal],
                signals["served"][split][signal],
                policy.n_boot,
                policy.seed,
                combine=combine,
                clusters=clusters[split],
            )
