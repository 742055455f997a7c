"""Where exact retrains of THIS deletion land: the null a forgetting rule holds the candidate against.

A rule asks whether the candidate, on these forget samples and these held-out samples, looks like a model
trained without the forget subjects. The answer must cover training randomness (exact retrains that differ
only in seed land far apart: digits, one subject, LiRA AUC 0.05 to 0.68 over ten seeds), and it is
conditional on the samples: the subjects to forget are given, and every model is scored on the same
held-out samples, so no sampling interval enters the comparison (the report still gives each number's
cluster-bootstrap interval, workers.verification.stats).

Why a null can be assembled per subject. The statistics gated here decompose over the forget subjects:
T = sum_s w_s T_s with w_s the subject's share of the forget samples (the forget-vs-held-out AUC is the
sample-weighted mean of each subject's AUC against the held-out set; the mean per-example score is the mean
of each subject's mean; the trigger success rate the mean of each subject's). An exact retrain of the
deletion never saw any forget subject; for T_s what matters is that it never saw s. A subject-half
reference that is OUT for s is such a model (up to the half of the data it saw, below), so s's OUT
references are draws of T_s under exact retrains: K/2 >= 8 of them by default. No reference need be OUT for
all forget subjects at once, which with random halves is rare (five subjects: 1 in 32).

The per-subject draws combine into a null for T when the T_s of different subjects are independent under
one model. Each T_s compares subject s's samples with the SAME model's held-out samples: what a seed or a
data size does to the whole model (more confident, better calibrated, better generalising) moves forget and
held-out samples alike and cancels in T_s; what is left is specific to s. That is an assumption about the
data (distinct people; the workloads' triggers share at most one pixel), so it is measured, not assumed:
over every pair of training subjects that a reference left out together, the correlation of their T_s
values is estimated (`pair_correlation`), and a positive correlation widens the null. So
  mean(T) = sum_s w_s m_s,   var(T) = sum_s w_s^2 v_s (1 + 1/n_s) + rho * sum_{s != t} w_s w_t sd_s sd_t,
with m_s, v_s the mean and variance of s's n_s OUT draws (1 + 1/n_s: where ONE more draw lands, not the
mean), and the bound is a Student-t prediction bound with Welch-Satterthwaite degrees of freedom.

Half the data. An OUT reference saw half the subjects; the candidate and an exact retrain nearly all. A
model trained on more data generalises better: a never-seen typical sample scores higher (more
member-like) under it, an atypical one (a mislabeled or triggered image, a text tied to a label its words
do not suggest) lower, since the model is surer of what the sample ought to be. Two corrections:
- every statistic reads a sample against the same model's held-out samples (AUC; per-example scores
  centred on the model's held-out median), which removes the shift common to never-seen samples;
- what remains moves full-data exact retrains of atypical forget samples BELOW the half-data null
  (measured with exact retrains of unseen seeds: digits, five subjects, ten seeds, AUC on average 2 null
  standard deviations below the mean; bios, three seeds, five people within 0.4 of it, one person 0.8 to
  1.7 below). The remembering side of the test is then conservative (it costs power, not false
  rejections). The over-unlearning side, where the bias would show as false rejections, is judged on the
  AUC at a stricter level (`Policy.over_unlearning_alpha`), and the false-rejection rate of the whole gate
  is measured in docs/benchmarks.md ("Gate operating characteristics").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from workers.verification.stats import t_quantile, welch_dof


@dataclass(frozen=True)
class SubjectDraws:
    """A statistic's values for one subject under each reference that never saw it."""

    subject: str
    weight: float  # the subject's share of the forget samples
    values: np.ndarray

    @property
    def n(self) -> int:
        return int(self.values.size)


@dataclass(frozen=True)
class RetrainNull:
    """The distribution of a statistic over exact retrains of a deletion, assembled per subject."""

    mean: float
    sd: float  # of one more exact retrain (prediction), correlation included
    dof: float
    min_draws: int  # the fewest OUT draws any forget subject has
    correlation: float  # between subjects under one model, as measured (0 when negative or unknown)

    def upper(self, alpha: float) -> float:
        return self.mean + t_quantile(1 - alpha, self.dof) * self.sd

    def lower(self, alpha: float) -> float:
        return self.mean - t_quantile(1 - alpha, self.dof) * self.sd

    def position(self, value: float) -> float:
        """How many null standard deviations `value` lies above the mean."""
        return (value - self.mean) / self.sd if self.sd > 0 else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {
            "mean": round(self.mean, 4),
            "sd": round(self.sd, 4),
            "dof": round(self.dof, 1),
            "min_draws": self.min_draws,
            "correlation": round(self.correlation, 3),
        }


def assemble(draws: Sequence[SubjectDraws], correlation: float = 0.0) -> RetrainNull | None:
    """The null of sum_s w_s T_s; None when some subject has fewer than 2 draws (no spread known)."""
    if not draws or min(d.n for d in draws) < 2:
        return None
    weights = np.array([d.weight for d in draws], float)
    weights = weights / weights.sum()
    means = np.array([d.values.mean() for d in draws])
    variances = np.array([d.values.var(ddof=1) for d in draws])
    counts = np.array([d.n for d in draws], float)
    parts = weights**2 * variances * (1 + 1 / counts)
    rho = max(0.0, float(correlation)) if np.isfinite(correlation) else 0.0
    spread = weights * np.sqrt(variances)
    cross = rho * (spread.sum() ** 2 - (spread**2).sum())
    variance = parts.sum() + cross
    dof = welch_dof(parts, counts - 1)
    return RetrainNull(float((weights * means).sum()), float(np.sqrt(variance)), dof, int(counts.min()), rho)


def pair_correlation(values: np.ndarray, out: np.ndarray, min_pairs: int = 20) -> float:
    """Mean correlation, across references, between two subjects' statistics when one reference left both
    out: `values` [K, n_subjects] (NaN where not computed), `out` [K, n_subjects] bool.

    Each subject's values are centred on its own OUT mean and scaled by its OUT sd, so the estimate is the
    average over pairs of sum_j z_sj z_tj over the references j that left both out, divided by their count.
    NaN with fewer than `min_pairs` (pair, reference) terms.
    """
    values = np.where(out, values, np.nan)
    mean = np.nanmean(values, axis=0)
    sd = np.nanstd(values, axis=0, ddof=1)
    usable = np.isfinite(sd) & (sd > 0) & (out.sum(axis=0) >= 3)
    z = np.where(out[:, usable], (values[:, usable] - mean[usable]) / sd[usable], 0.0)
    mask = out[:, usable].astype(float)
    products = (z.sum(axis=1) ** 2 - (z**2).sum(axis=1)).sum()  # sum over j of sum_{s != t} z_sj z_tj
    pairs = (mask.sum(axis=1) ** 2 - mask.sum(axis=1)).sum()
    return float(products / pairs) if pairs >= min_pairs else float("nan")


def subject_weights(subjects: Sequence[str]) -> dict[str, float]:
    """Each subject's share of the samples (the weight of its term in a decomposed statistic)."""
    names, counts = np.unique(np.asarray(subjects), return_counts=True)
    return {str(name): float(c) / len(subjects) for name, c in zip(names, counts, strict=True)}


def weighted_statistic(per_subject: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """sum_s w_s T_s over the subjects present in both."""
    keys = [s for s in weights if s in per_subject]
    total = sum(weights[s] for s in keys)
    return float(sum(weights[s] * per_subject[s] for s in keys) / total) if total > 0 else float("nan")
