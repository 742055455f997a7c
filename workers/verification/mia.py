"""Membership inference: can an attacker tell the forget set from never-seen data, and the retain set too?

The per-example attack is offline LiRA (Carlini et al. 2022) on subject-half references
(workers.verification.references). For a sample x, the references that never saw x's SUBJECT give the
distribution of its signal when it is not a member; a model's score on x is

    z_x = (phi_x - mu_x) / (sd_s * sqrt(1 + 1/n_x)),

phi the signal (logit-scaled confidence for classifiers, mean token log-prob for language models), mu_x the
mean over its n_x OUT references, sd_s their spread pooled over the samples of x's subject s (K/2 = 8
draws per sample are too few for a variance of its own; a subject's samples share a trigger or a person,
so their spreads are alike; pooling over all samples would let typical samples set the scale of atypical
ones), and sqrt(1 + 1/n_x) makes z the standardised distance of ONE more draw. Every model's z are then
centred on its own held-out median (the shift that more training data gives every never-seen sample).

Statistics, each decomposed over forget subjects (workers.verification.retrain_null):
- `forget_auc`: P(z of a forget sample > z of a held-out sample), the attacker's AUC;
- `per_example`: the mean of the forget samples' z, each clipped to +-`Policy.per_example_clip`. Unlike the
  AUC it does not saturate: on digits one writer's triggered images sit at AUC 0.1-0.7 under exact
  retrains, so an untouched model at 1.0 is within reach of them, while its per-example score is far out;
- `tpr_<fpr>` (reported): share of forget samples above the held-out threshold at that FPR.
For each, the null of exact retrains comes from the references themselves: reference j, read against the
OTHER references (leave-one-out), is an exact retrain for every subject it never saw.

Also reported: the population `loss` attack and, for language models, `zlib_ratio`, `min_k_20`, `min_k_40`
and `ref_ratio` (loss minus the mean loss of the OUT references), retain-vs-held-out AUC, all with cluster
bootstrap intervals over subjects.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from workers.verification.checks import CheckResult, EvalSets, SplitSignals, metric_name
from workers.verification.gate import Policy
from workers.verification.references import ReferenceSet
from workers.verification.retrain_null import (
    RetrainNull,
    SubjectDraws,
    assemble,
    pair_correlation,
    subject_weights,
)
from workers.verification.signals import classifier_confidence
from workers.verification.stats import auc, auc_by_cluster, auc_estimate, mean_estimate, tpr_estimate

LM_ATTACKS = ("zlib_ratio", "min_k_20", "min_k_40")
NULL_STATISTICS = ("forget_auc", "per_example")


def lira_signal(loss: np.ndarray, is_lm: bool) -> np.ndarray:
    return -np.asarray(loss, float) if is_lm else classifier_confidence(loss)


@dataclass
class LiraReader:
    """Reads a model's signals against the references that never saw each sample's subject."""

    signal: np.ndarray  # [K, n] reference signals over EvalSets.all
    out: np.ndarray  # [K, n] True where the reference never saw the sample's subject
    subjects: np.ndarray  # [n] subject of each sample
    heldout: np.ndarray  # [n] bool
    is_lm: bool

    @property
    def k(self) -> int:
        return int(self.signal.shape[0])

    def out_statistics(self, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mu, sd, n) per sample over its OUT references, without reference `exclude`."""
        out = self.out.copy()
        if exclude is not None:
            out[exclude] = False
        n = out.sum(axis=0)
        safe_n = np.maximum(n, 1)
        mu = np.where(out, self.signal, 0).sum(axis=0) / safe_n
        squares = np.where(out, (self.signal - mu) ** 2, 0).sum(axis=0)
        dof = np.clip(n - 1, 0, None)
        _, index = np.unique(self.subjects, return_inverse=True)
        pooled = np.bincount(index, squares) / np.maximum(np.bincount(index, dof), 1)
        sd = np.sqrt(pooled[index])
        floor = np.sqrt(np.sum(squares) / max(1, dof.sum())) * 1e-3 + 1e-6  # a subject without spread
        return mu, np.maximum(sd, floor), n

    def z(self, phi: np.ndarray, exclude: int | None = None) -> np.ndarray:
        """Centred per-example scores of a model with signals `phi` (NaN where no OUT reference is left)."""
        mu, sd, n = self.out_statistics(exclude)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(n > 0, (phi - mu) / (sd * np.sqrt(1 + 1 / np.maximum(n, 1))), np.nan)
        centre = np.nanmedian(z[self.heldout]) if self.heldout.any() else 0.0
        return z - centre

    def out_mean_loss(self) -> np.ndarray:
        losses = -self.signal if self.is_lm else None
        if losses is None:
            raise ValueError("the reference-loss ratio is a language-model attack")
        return np.where(self.out, losses, 0).sum(axis=0) / np.maximum(self.out.sum(axis=0), 1)


def lira_reader(refs: ReferenceSet, sets: EvalSets, is_lm: bool, batch_size: int = 64) -> LiraReader:
    samples = sets.all
    losses = refs.losses(samples, batch_size)
    heldout = np.zeros(len(samples), bool)
    heldout[len(sets.forget) + len(sets.retain) :] = True
    return LiraReader(
        lira_signal(losses, is_lm),
        ~refs.membership(samples),
        np.array([s.subject for s in samples]),
        heldout,
        is_lm,
    )


def subject_statistics(z: np.ndarray, sets: EvalSets, clip: float, part: str = "forget") -> dict[str, dict]:
    """statistic -> subject -> value, for the subjects of `part` (forget or retain) against held-out."""
    parts = sets.split(z)
    subjects = [s.subject for s in getattr(sets, part)]
    scores, heldout = parts[part], parts["heldout"]
    keep = np.isfinite(scores)
    labels = np.asarray(subjects)[keep]
    clipped = np.clip(scores[keep], -clip, clip)
    per_example = {s: float(clipped[labels == s].mean()) for s in dict.fromkeys(labels.tolist())}
    return {"forget_auc": auc_by_cluster(scores[keep], heldout, labels), "per_example": per_example}


def retrain_nulls(
    reader: LiraReader, sets: EvalSets, policy: Policy
) -> tuple[dict[str, RetrainNull | None], dict[str, float]]:
    """statistic -> null of exact retrains for the forget set; and the measured between-subject correlation.

    Reference j read against the other references is an exact retrain for the subjects it never saw: its
    per-subject statistics are those subjects' draws. The correlation comes from every subject in the
    evaluated retain and forget samples, pairs that one reference left out together.
    """
    forget_subjects = [s.subject for s in sets.forget]
    all_subjects = list(dict.fromkeys([*forget_subjects, *(s.subject for s in sets.retain)]))
    column = {s: i for i, s in enumerate(all_subjects)}
    first_index = {}
    for i, s in enumerate(reader.subjects):
        first_index.setdefault(s, i)
    out = np.array([[reader.out[j, first_index[s]] for s in all_subjects] for j in range(reader.k)])
    table = {stat: np.full((reader.k, len(all_subjects)), np.nan) for stat in NULL_STATISTICS}
    for j in range(reader.k):
        z = reader.z(reader.signal[j], exclude=j)
        for part in ("forget", "retain"):
            for stat, values in subject_statistics(z, sets, policy.per_example_clip, part).items():
                for subject, value in values.items():
                    if reader.out[j, first_index[subject]]:
                        table[stat][j, column[subject]] = value
    weights = subject_weights(forget_subjects)
    nulls: dict[str, RetrainNull | None] = {}
    correlations: dict[str, float] = {}
    for stat, values in table.items():
        correlations[stat] = pair_correlation(values, out)
        draws = [
            SubjectDraws(s, w, values[:, column[s]][np.isfinite(values[:, column[s]])])
            for s, w in weights.items()
        ]
        nulls[stat] = assemble(draws, correlations[stat]) if draws else None
    return nulls, correlations


def attack_scores(
    sets: EvalSets, signals: SplitSignals, reader: LiraReader | None, is_lm: bool
) -> dict[str, dict[str, np.ndarray]]:
    """attack -> split -> per-sample membership score of one model (higher = member)."""
    scores: dict[str, dict[str, np.ndarray]] = {"loss": {k: -v["loss"] for k, v in signals.items()}}
    if is_lm:
        scores["zlib_ratio"] = {k: -v["zlib_ratio"] for k, v in signals.items()}
        for attack in LM_ATTACKS[1:]:
            scores[attack] = {k: v[attack] for k, v in signals.items()}
    if reader is not None:
        phi = np.concatenate(
            [lira_signal(signals[p]["loss"], is_lm) for p in ("forget", "retain", "heldout")]
        )
        scores["lira"] = sets.split(reader.z(phi))
        if is_lm:
            ref_loss = sets.split(reader.out_mean_loss())
            scores["ref_ratio"] = {k: -(v["loss"] - ref_loss[k]) for k, v in signals.items()}
    return scores


def check_mia(
    sets: EvalSets,
    signals: Mapping[str, SplitSignals],
    reader: LiraReader | None,
    is_lm: bool,
    policy: Policy,
    replicas: Mapping[str, np.ndarray] | None = None,
) -> CheckResult:
    """`replicas`: the seed replicas' per-sample "loss" [R, n] over `sets.all` (retain exposure's spread)."""
    started = time.perf_counter()
    result = CheckResult("mia")
    clusters = {part: [s.subject for s in getattr(sets, part)] for part in ("forget", "retain", "heldout")}
    if reader is None:
        result.not_checked.append("LiRA (no reference models: the per-example attack needs them)")
    else:
        result.values["lira.references"] = reader.k
        result.values["lira.out_per_subject"] = int(reader.out[:, ~reader.heldout].sum(axis=0).min(initial=0))
    scores = {role: attack_scores(sets, s, reader, is_lm) for role, s in signals.items()}
    nb, seed = policy.n_boot, policy.seed
    f, r, h = clusters["forget"], clusters["retain"], clusters["heldout"]
    for role, by_attack in scores.items():
        for attack, s in by_attack.items():
            keep = {part: np.isfinite(s[part]) for part in s}
            fk, hk = s["forget"][keep["forget"]], s["heldout"][keep["heldout"]]
            fc, hc = np.asarray(f)[keep["forget"]], np.asarray(h)[keep["heldout"]]
            result.metrics[metric_name(attack, "forget_auc", role)] = auc_estimate(fk, hk, nb, seed, fc, hc)
            rk, rc = s["retain"][keep["retain"]], np.asarray(r)[keep["retain"]]
            result.metrics[metric_name(attack, "retain_auc", role)] = auc_estimate(rk, hk, nb, seed, rc, hc)
            for fpr in policy.fprs:
                result.metrics[metric_name(attack, f"tpr_{fpr:g}", role)] = tpr_estimate(
                    fk, hk, fpr, nb, seed, fc, hc
                )
            if attack == "lira":
                clipped = np.clip(fk, -policy.per_example_clip, policy.per_example_clip)
                result.metrics[metric_name(attack, "per_example", role)] = mean_estimate(
                    clipped, nb, seed, clusters=fc
                )
    if reader is not None and sets.forget and sets.heldout:
        nulls, correlations = retrain_nulls(reader, sets, policy)
        for stat, null in nulls.items():
            result.values[f"lira.{stat}.null"] = null
            result.values[f"lira.{stat}.subject_correlation"] = correlations[stat]
        if any(null is None for null in nulls.values()):
            result.not_checked.append(
                f"the spread of exact retrains (each forget subject needs >= 2 OUT references, K={reader.k})"
            )
        if replicas is not None and replicas["loss"].shape[0] and "served" in scores:
            spread = [result.metrics[metric_name("lira", "retain_auc", "served")].value]
            for loss in replicas["loss"]:
                z = sets.split(reader.z(lira_signal(loss, is_lm)))
                spread.append(auc(z["retain"][np.isfinite(z["retain"])], z["heldout"]))
            result.values["lira.retain_auc.seed_spread"] = spread
    result.values["primary_attack"] = "lira" if reader is not None else "loss"
    attack = result.values["primary_attack"]
    result.plot_data = {
        "attack": attack,
        "scores": {role: by_attack[attack] for role, by_attack in scores.items()},
        "loss": {role: {k: v["loss"] for k, v in s.items()} for role, s in signals.items()},
    }
    result.seconds = time.perf_counter() - started
    return result


def forget_statistic(result: CheckResult, stat: str, role: str) -> float:
    """A gated statistic's value for one model (NaN when not measured)."""
    estimate = result.metrics.get(metric_name("lira", stat, role))
    return float("nan") if estimate is None else float(estimate.value)
