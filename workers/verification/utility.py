"""Utility: accuracy (classifiers) or perplexity (language models) on retain and held-out test data.

Each model's value has a bootstrap interval; the gate reads the paired ratios candidate / reference for
accuracy (the reference sets what a model without the forget set can reach) and candidate / served for
perplexity (VERIFICATION.md's starting gate). Perplexity is exp of the mean per-sample token loss.
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
    if is_lm:
        pairs, signal = [("candidate", "served"), ("reference", "served")], "loss"
        combine = lambda a, b: np.exp(a - b)  # noqa: E731 - ratio of exp(mean loss)
    else:
        base = "reference" if "reference" in signals else "served"
        pairs, signal, combine = [("candidate", base), ("served", base)], "correct", _ratio
        if base == "served":
            result.not_checked.append(
                "accuracy against a retrain reference (none given): compared with served"
            )
    metric = "perplexity" if is_lm else "accuracy"
    for a, b in pairs:
        if a not in signals or b not in signals or a == b:
            continue
        for split in ("retain", "heldout"):
            result.metrics[metric_name("utility", f"{metric}_{split}", a, b)] = paired_difference(
                signals[a][split][signal],
                signals[b][split][signal],
                policy.n_boot,
                policy.seed,
                combine=combine,
            )
