"""The statistics every check reports with: AUC, TPR at low FPR, cluster bootstrap intervals, binomial tests,
and the prediction bounds that the gate's exact-retrain nulls use.

This module is the only home of these primitives. Scores follow one convention everywhere: higher means
"more likely a member" (the positive group, e.g. forget samples) than the negative group (held-out).

Intervals are percentile bootstrap intervals over CLUSTERS: a data subject's samples are correlated (one
person's records, one writer's images with the same planted trigger), so resampling samples one by one
gives intervals that are too narrow. Every function takes `clusters`, the subject of each sample (aligned
with the values); whole subjects are drawn with replacement and carry all their samples with them. Without
`clusters` each sample is its own cluster. Groups are resampled independently (stratified), and when two
models are compared on the same samples the SAME resample is applied to both (paired), so the interval of a
difference reflects the sampling of subjects, not model noise counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

N_BOOT = 1000
LEVEL = 0.95

Clusters = Sequence[Any] | np.ndarray | None


@dataclass(frozen=True)
class Estimate:
    """A number with its bootstrap interval and the sample counts behind it."""

    value: float
    low: float
    high: float
    n: int
    groups: Mapping[str, int] = field(default_factory=dict)  # e.g. {"forget": 5, "heldout": 200}

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": _finite(self.value),
            "ci95": [_finite(self.low), _finite(self.high)],
            "n": self.n,
            **({"groups": dict(self.groups)} if self.groups else {}),
        }


NAN_ESTIMATE = Estimate(float("nan"), float("nan"), float("nan"), 0)


def _finite(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def cluster_count(clusters: Clusters, n: int) -> int:
    """How many independent units `n` samples are: their distinct subjects (n without clusters)."""
    return n if clusters is None else int(np.unique(np.asarray(clusters)).size)


def _weights(n: int, clusters: Clusters, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap multiplicities [n_boot, n]: how often each sample is drawn in each resample, when whole
    clusters are drawn with replacement (each sample its own cluster without `clusters`)."""
    if clusters is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    labels, index = np.unique(np.asarray(clusters), return_inverse=True)
    if index.size != n:
        raise ValueError(f"{index.size} cluster labels for {n} values")
    drawn = rng.multinomial(labels.size, np.full(labels.size, 1.0 / labels.size), size=n_boot)
    return drawn[:, index].astype(np.float64)


def _weighted_mean(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Row-wise weighted means [n_boot] of x ([n] for every row, or [n_boot, n] row by row)."""
    total = w.sum(axis=1)
    sums = (w * x).sum(axis=1) if x.ndim == 2 else w @ x
    return sums / np.where(total > 0, total, np.nan)


# -- AUC ------------------------------------------------------------------------------------------


def _comparison(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """[n_pos, n_neg]: 1 where the positive scores higher, 0.5 on ties, 0 below."""
    diff = pos[:, None] - neg[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    ranks = sps.rankdata(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def auc_by_cluster(pos: np.ndarray, neg: np.ndarray, pos_clusters: Sequence[Any]) -> dict[Any, float]:
    """Each positive cluster's share of the AUC: P(its sample scores above a random negative).

    The AUC is the sample-weighted mean of these, so it decomposes over subjects (see retrain_null).
    """
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if neg.size == 0:
        return {}
    below = np.searchsorted(np.sort(neg), pos, side="left")
    ties = np.searchsorted(np.sort(neg), pos, side="right") - below
    per_sample = (below + 0.5 * ties) / neg.size
    labels = np.asarray(pos_clusters)
    return {c: float(per_sample[labels == c].mean()) for c in dict.fromkeys(labels.tolist())}


def _boot_auc(
    comparisons: Sequence[np.ndarray],
    signs: Sequence[float],
    clusters: tuple[Clusters, Clusters],
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """Bootstrap of sum_i sign_i * AUC_i where all AUCs share the same positives and negatives.

    With multiplicity vectors w_pos, w_neg a resampled AUC is w_pos^T C w_neg / (|w_pos| |w_neg|): exact,
    and a few matrix products instead of n_boot re-rankings.
    """
    rng = np.random.default_rng(seed)
    n_pos, n_neg = comparisons[0].shape
    w_pos, w_neg = _weights(n_pos, clusters[0], n_boot, rng), _weights(n_neg, clusters[1], n_boot, rng)
    combined = sum(s * c for s, c in zip(signs, comparisons, strict=True))
    return np.einsum("bp,bp->b", w_pos, w_neg @ combined.T) / (w_pos.sum(axis=1) * w_neg.sum(axis=1))


def auc_estimate(
    pos: np.ndarray,
    neg: np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    pos_clusters: Clusters = None,
    neg_clusters: Clusters = None,
) -> Estimate:
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    groups = _group_counts(pos, neg, pos_clusters, neg_clusters)
    if pos.size == 0 or neg.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, groups)
    boot = _boot_auc([_comparison(pos, neg)], [1.0], (pos_clusters, neg_clusters), n_boot, seed)
    return Estimate(auc(pos, neg), *_interval(boot), pos.size + neg.size, groups)


def auc_difference(
    pos_a: np.ndarray,
    neg_a: np.ndarray,
    pos_b: np.ndarray,
    neg_b: np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    pos_clusters: Clusters = None,
    neg_clusters: Clusters = None,
) -> Estimate:
    """AUC(a) - AUC(b) for two models scored on the same samples (aligned arrays), paired bootstrap."""
    pos_a, neg_a, pos_b, neg_b = (np.asarray(x, float) for x in (pos_a, neg_a, pos_b, neg_b))
    groups = _group_counts(pos_a, neg_a, pos_clusters, neg_clusters)
    if pos_a.size == 0 or neg_a.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, groups)
    comps = [_comparison(pos_a, neg_a), _comparison(pos_b, neg_b)]
    boot = _boot_auc(comps, [1.0, -1.0], (pos_clusters, neg_clusters), n_boot, seed)
    value = auc(pos_a, neg_a) - auc(pos_b, neg_b)
    return Estimate(value, *_interval(boot), pos_a.size + neg_a.size, groups)


def _group_counts(pos: np.ndarray, neg: np.ndarray, pos_clusters: Clusters, neg_clusters: Clusters) -> dict:
    counts = {"positive": int(pos.size), "negative": int(neg.size)}
    if pos_clusters is not None or neg_clusters is not None:
        counts["positive_subjects"] = cluster_count(pos_clusters, pos.size)
        counts["negative_subjects"] = cluster_count(neg_clusters, neg.size)
    return counts


# -- ROC and TPR at low FPR -------------------------------------------------------------------------


def roc_curve(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr = (pos[None, :] >= thresholds[:, None]).mean(axis=1) if pos.size else np.zeros(len(thresholds))
    fpr = (neg[None, :] >= thresholds[:, None]).mean(axis=1) if neg.size else np.zeros(len(thresholds))
    return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], tpr, [1.0]])


def tpr_threshold(neg: np.ndarray, fpr: float) -> float:
    """The strictest threshold that lets at most `fpr` of the negatives score above it.

    With n negatives, floor(fpr * n) of them may score above the threshold; below 1 / n the threshold is the
    highest negative score (an FPR of 0 is the finest this many negatives can resolve).
    """
    neg = np.asarray(neg, float)
    allowed = int(np.floor(fpr * neg.size + 1e-9))
    return float(np.sort(neg)[::-1][min(allowed, neg.size - 1)])


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """Share of positives above `tpr_threshold(neg, fpr)`."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    return float((pos > tpr_threshold(neg, fpr)).mean())


def _boot_tpr(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    signs: Sequence[float],
    fpr: float,
    clusters: tuple[Clusters, Clusters],
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """Bootstrap of sum_i sign_i * TPR_i at `fpr`; all (pos, neg) pairs share one resample (paired).

    In a resample the threshold is the (allowed + 1)-th highest DRAWN negative: with the negatives sorted
    from the highest, the first position where the running count of draws exceeds `allowed`.
    """
    rng = np.random.default_rng(seed)
    n_pos, n_neg = pairs[0][0].size, pairs[0][1].size
    w_pos, w_neg = _weights(n_pos, clusters[0], n_boot, rng), _weights(n_neg, clusters[1], n_boot, rng)
    allowed = np.floor(fpr * w_neg.sum(axis=1) + 1e-9)
    total = np.zeros(n_boot)
    for sign, (pos, neg) in zip(signs, pairs, strict=True):
        order = np.argsort(-neg, kind="stable")
        running = np.cumsum(w_neg[:, order], axis=1)
        first = np.minimum((running <= allowed[:, None]).sum(axis=1), n_neg - 1)
        threshold = neg[order][first]
        total += sign * _weighted_mean(w_pos, pos[None, :] > threshold[:, None])
    return total


def tpr_estimate(
    pos: np.ndarray,
    neg: np.ndarray,
    fpr: float,
    n_boot: int = N_BOOT,
    seed: int = 0,
    pos_clusters: Clusters = None,
    neg_clusters: Clusters = None,
) -> Estimate:
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    groups = _group_counts(pos, neg, pos_clusters, neg_clusters)
    if pos.size == 0 or neg.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, groups)
    boot = _boot_tpr([(pos, neg)], [1.0], fpr, (pos_clusters, neg_clusters), n_boot, seed)
    return Estimate(tpr_at_fpr(pos, neg, fpr), *_interval(boot), pos.size + neg.size, groups)


def tpr_difference(
    pos_a: np.ndarray,
    neg_a: np.ndarray,
    pos_b: np.ndarray,
    neg_b: np.ndarray,
    fpr: float,
    n_boot: int = N_BOOT,
    seed: int = 0,
    pos_clusters: Clusters = None,
    neg_clusters: Clusters = None,
) -> Estimate:
    """TPR(a) - TPR(b) at the same FPR, two models on the same samples, paired bootstrap."""
    pos_a, neg_a, pos_b, neg_b = (np.asarray(x, float) for x in (pos_a, neg_a, pos_b, neg_b))
    groups = _group_counts(pos_a, neg_a, pos_clusters, neg_clusters)
    if pos_a.size == 0 or neg_a.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, groups)
    boot = _boot_tpr(
        [(pos_a, neg_a), (pos_b, neg_b)], [1.0, -1.0], fpr, (pos_clusters, neg_clusters), n_boot, seed
    )
    value = tpr_at_fpr(pos_a, neg_a, fpr) - tpr_at_fpr(pos_b, neg_b, fpr)
    return Estimate(value, *_interval(boot), pos_a.size + neg_a.size, groups)


# -- means, ratios, proportions ---------------------------------------------------------------------


def mean_estimate(
    x: np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    clusters: Clusters = None,
) -> Estimate:
    """Mean of `x` (optionally transformed after averaging, e.g. exp for perplexity)."""
    x = np.asarray(x, float)
    if x.size == 0:
        return NAN_ESTIMATE
    f = transform or (lambda v: v)
    boot = f(_weighted_mean(_weights(x.size, clusters, n_boot, np.random.default_rng(seed)), x))
    value = float(f(np.asarray(x.mean())))
    return Estimate(value, *_interval(np.asarray(boot)), x.size, _subjects(clusters))


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    combine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    clusters: Clusters = None,
) -> Estimate:
    """combine(mean a, mean b) (default a - b) for aligned per-sample values of two models, paired."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size == 0:
        return NAN_ESTIMATE
    f = combine or (lambda u, v: u - v)
    w = _weights(a.size, clusters, n_boot, np.random.default_rng(seed))
    boot = f(_weighted_mean(w, a), _weighted_mean(w, b))
    value = float(f(np.asarray(a.mean()), np.asarray(b.mean())))
    return Estimate(value, *_interval(np.asarray(boot)), a.size, _subjects(clusters))


def two_sample_difference(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int = N_BOOT,
    seed: int = 0,
    groups: Sequence[str] = ("a", "b"),
    clusters: tuple[Clusters, Clusters] = (None, None),
) -> Estimate:
    """mean(a) - mean(b) for two independent groups, each resampled on its own."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    counts = {groups[0]: int(a.size), groups[1]: int(b.size)}
    if a.size == 0 or b.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, counts)
    rng = np.random.default_rng(seed)
    boot = _weighted_mean(_weights(a.size, clusters[0], n_boot, rng), a) - _weighted_mean(
        _weights(b.size, clusters[1], n_boot, rng), b
    )
    return Estimate(float(a.mean() - b.mean()), *_interval(boot), a.size + b.size, counts)


def _subjects(clusters: Clusters) -> dict[str, int]:
    return {} if clusters is None else {"subjects": cluster_count(clusters, 0)}


def proportion_estimate(successes: int, n: int) -> Estimate:
    """Share with its exact (Clopper-Pearson) 95 % interval: the bootstrap degenerates at 0 or n hits."""
    if n == 0:
        return NAN_ESTIMATE
    ci = sps.binomtest(int(successes), int(n)).proportion_ci(confidence_level=LEVEL, method="exact")
    return Estimate(successes / n, float(ci.low), float(ci.high), int(n))


def binomial_test(successes: int, n: int, p0: float, alternative: str = "greater") -> float:
    """p-value of `successes` out of `n` under a success rate p0 (one-sided 'greater' by default)."""
    if n == 0:
        return float("nan")
    p0 = float(np.clip(p0, 1e-12, 1 - 1e-12))
    return float(sps.binomtest(int(successes), int(n), p0, alternative=alternative).pvalue)


def fisher_exposure_pvalue(exposures_bits: np.ndarray) -> float:
    """p-value that secrets with these exposures were never seen by the model (Fisher's method).

    A never-inserted secret's rank among |C| same-template candidates is uniform, so P(exposure >= e) = 2^-e
    and e * ln 2 is Exp(1)-distributed; twice their sum is chi-square with 2m degrees of freedom.
    """
    e = np.asarray(exposures_bits, float)
    if e.size == 0:
        return float("nan")
    return float(sps.chi2.sf(2 * np.log(2) * np.clip(e, 0, None).sum(), df=2 * e.size))


# -- prediction bounds: where one more draw of a distribution known from a few draws lands -----------


def t_quantile(probability: float, dof: float) -> float:
    """Student-t quantile; dof <= 0 gives nan (no spread known), infinite dof the normal quantile."""
    if not dof > 0:
        return float("nan")
    return float(sps.t.ppf(probability, dof)) if np.isfinite(dof) else float(sps.norm.ppf(probability))


def welch_dof(variances: np.ndarray, dofs: np.ndarray) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of independent variance estimates."""
    variances, dofs = np.asarray(variances, float), np.asarray(dofs, float)
    keep = variances > 0
    if not keep.any():
        return float("inf")
    if (dofs[keep] <= 0).any():
        return 0.0
    return float(variances[keep].sum() ** 2 / (variances[keep] ** 2 / dofs[keep]).sum())
