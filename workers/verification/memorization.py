"""Memorization of language models: what a model can still reproduce of the forget set, and canary exposure.

From the teacher-forced pass (workers.verification.signals): exact memorization (share of target tokens
the argmax predicts), extraction strength (1 - shortest prefix share from which greedy decoding reproduces
the rest) and greedy continuation of the forget records' first half (verbatim, and share matched before the
first divergence). Reported for forget and held-out samples per model, and candidate - reference on forget.

Canaries (Secret Sharer): a secret planted in a subject's record; exposure = log2 |C| - log2 rank of the
true secret among C same-template candidates, ranked by -log P(prefix + candidate + suffix). A model that
never saw the secret ranks it uniformly, so P(exposure >= e) = 2^-e: the gate tests the deleted canaries'
exposures against that null (Fisher) and compares their mean with never-inserted canaries' mean.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

import numpy as np

from workers.modeling.base import ModelAdapter
from workers.verification.checks import FORGET_PAIRS, CheckResult, EvalSets, SplitSignals, metric_name
from workers.verification.gate import Policy
from workers.verification.served_cache import ServedCache
from workers.verification.signals import sequence_nll
from workers.verification.stats import (
    fisher_exposure_pvalue,
    mean_estimate,
    paired_difference,
    two_sample_difference,
)

MEMORIZATION_SIGNALS = (
    "exact_memorization",
    "extraction_strength",
    "continuation_verbatim",
    "continuation_match",
)


class CanaryLike(Protocol):
    """A planted secret with a fixed template (workers.workloads.Canary has this shape)."""

    subject: str
    secret: str

    def text(self, secret: str | None = None) -> str: ...

    def candidates(self, n: int, seed: int = 0) -> list[str]: ...


def check_memorization(signals: Mapping[str, SplitSignals], sets: EvalSets, policy: Policy) -> CheckResult:
    started = time.perf_counter()
    result = CheckResult("memorization")
    clusters = {split: [s.subject for s in getattr(sets, split)] for split in ("forget", "heldout")}
    for role, by_split in signals.items():
        for split in ("forget", "heldout"):
            for name in MEMORIZATION_SIGNALS:
                result.metrics[metric_name("memorization", f"{name}_{split}", role)] = mean_estimate(
                    by_split[split][name], policy.n_boot, policy.seed, clusters=clusters[split]
                )
    for a, b in FORGET_PAIRS:
        if a in signals and b in signals:
            for name in MEMORIZATION_SIGNALS:
                result.metrics[metric_name("memorization", f"{name}_forget", a, b)] = paired_difference(
                    signals[a]["forget"][name],
                    signals[b]["forget"][name],
                    policy.n_boot,
                    policy.seed,
                    clusters=clusters["forget"],
                )
    result.seconds = time.perf_counter() - started
    return result


def exposure(model: ModelAdapter, canary: CanaryLike, policy: Policy) -> tuple[float, int, int]:
    """(exposure in bits, rank of the true secret, number of candidates including it)."""
    pool = [canary.secret, *canary.candidates(policy.max_canary_candidates - 1, seed=policy.seed)]
    nll = sequence_nll(model, [canary.text(c) for c in pool], policy.batch_size)
    rank = 1 + int((nll[1:] < nll[0]).sum())
    return float(np.log2(len(pool)) - np.log2(rank)), rank, len(pool)


def check_canaries(
    models: Mapping[str, ModelAdapter],
    planted: Sequence[CanaryLike],
    control: Sequence[CanaryLike],
    forget_subjects: Collection[str],
    policy: Policy,
    served_cache: ServedCache | None = None,
) -> CheckResult:
    """Exposure of the forget subjects' canaries (deleted), of a few retained subjects' canaries (kept: a
    view of collateral damage) and of never-inserted canaries (control), for every model given.

    The rule compares each model with itself (deleted vs never-inserted canaries, and the uniform-rank
    null), so no reference model needs scoring: scoring costs |candidates| sequences per canary and model.
    """
    started = time.perf_counter()
    result = CheckResult("canary")
    groups = {
        "deleted": [c for c in planted if c.subject in forget_subjects],
        "kept": [c for c in planted if c.subject not in forget_subjects][: policy.max_kept_canaries],
        "control": list(control),
    }
    if not groups["deleted"]:
        result.not_checked.append("canary exposure (no planted canary among the forget subjects)")
    if not groups["control"]:
        result.not_checked.append("canary baseline (no never-inserted canary to compare with)")
    if not groups["deleted"] or not groups["control"]:
        result.seconds = time.perf_counter() - started
        return result
    table: list[dict] = []
    for group, items in groups.items():
        for c in items:
            row = {"subject": c.subject, "group": group}
            for role, model in models.items():
                if role == "relearned" and group != "deleted":
                    continue  # a retain fine-tune leaves never-inserted canaries as they were: 2x cheaper
                if served_cache is not None and model is models.get("served"):  # untouched: cached
                    key = f"{c.subject}|{c.secret}|{policy.max_canary_candidates}|{policy.seed}"
                    bits, rank, size = served_cache.exposure(key, lambda m=model, c=c: exposure(m, c, policy))
                else:
                    bits, rank, size = exposure(model, c, policy)
                row[role] = {"exposure_bits": bits, "rank": rank, "candidates": size}
            table.append(row)
    for role in models:
        per_group = {g: _bits(table, role, g) for g in groups}
        for g, bits in per_group.items():
            if bits.size:
                result.metrics[metric_name("canary", f"exposure_{g}_bits", role)] = mean_estimate(
                    bits, policy.n_boot, policy.seed
                )
        controls = per_group["control"] if per_group["control"].size else _bits(table, "candidate", "control")
        result.metrics[metric_name("canary", "deleted_minus_control_bits", role)] = two_sample_difference(
            per_group["deleted"], controls, policy.n_boot, policy.seed, groups=("deleted", "control")
        )
        result.values[f"canary.deleted_pvalue.{role}"] = fisher_exposure_pvalue(per_group["deleted"])
    result.values["canary.table"] = table
    result.plot_data = {"table": table, "roles": list(models)}
    result.seconds = time.perf_counter() - started
    return result


def _bits(table: list[dict], role: str, group: str) -> np.ndarray:
    return np.array([r[role]["exposure_bits"] for r in table if r["group"] == group and role in r])
