"""Utility: accuracy (classifiers) or perplexity (language models) on retain and held-out test data.

Each model's value has a bootstrap interval; the gate reads the paired ratio candidate / reference: the
exact retrain sets what a model without the forget set can reach. Without a reference the ratio is to the
served version. For language models VERIFICATION.md's starting gate compares perplexity with the served
version's, but measured on bios (small) exact retraining without 5 of 40 people has 1.35x the served
perplexity on retain data (its blocks shrink, so it trains fewer steps): a bound relative to served would
refuse exact retraining itself. Perplexity is exp of the mean per-sample token loss.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from workers.verification.checks import CheckResult, SplitSignals, metric_name
from workers.verification.gate import Policy
from workers.verification.stats import mean_estimate, paired_difference

SPLITS = ("forget", "retain", "heldout")


def check_utility(signals: Mapping[str, SplitSignals], is_lm: bool, policy: Policy) -> CheckResult:
    started = time.perf_counter()
    result = CheckResult("utility")
    for role, by_split in signals.items():
        for split in SPLITS:
            values = by_split[split]
            if "loss" not in values or values["loss"].size == 0:
                continue
            seed = policy.seed
            result.metrics[metric_name("utility", f"loss_{split}", role)] = mean_estimate(
                values["loss"], policy.n_boot, seed
            )
            if is_lm:
                result.metrics[metric_name("utility", f"perplexity_{split}", role)] = mean_estimate(
                    values["loss"], policy.n_boot, seed, transform=np.exp
                )
            else:
                result.metrics[metric_name("utility", f"accuracy_{split}", role)] = mean_estimate(
                    values["correct"], policy.n_boot, seed
                )
    _ratios(result, signals, is_lm, policy)
    result.seconds = time.perf_counter() - started
    return result


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a / np.where(b == 0, np.nan, b)


def _ratios(result: CheckResult, signals: Mapping[str, SplitSignals], is_lm: bool, policy: Policy) -> None:
    base = "reference" if "reference" in signals else "served"
    if base == "served":
        result.not_checked.append(
            "utility against an exact-retrain reference (none given): compared with served"
        )
    if is_lm:
        metric, signal = "perplexity", "loss"
        combine = lambda a, b: np.exp(a - b)  # noqa: E731 - ratio of exp(mean loss)
    else:
        metric, signal, combine = "accuracy", "correct", _ratio
    for a in ("candidate", "served"):
        if a == base or a not in signals:
            continue
        for split in ("retain", "heldout"):
            result.metrics[metric_name("utility", f"{metric}_{split}", a, base)] = paired_difference(
                signals[a][split][signal],
                signals[base][split][signal],
                policy.n_boot,
                policy.seed,
                combine=combine,
            )
