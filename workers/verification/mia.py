"""Membership inference: can an attacker tell the forget set from held-out data, and the retain set too?

Attacks (score: higher = more likely a member):
- `loss`: population loss attack, one threshold for all samples (-loss). Weak: it cannot tell an untouched
  model from a retrain on the small digits CNN (AUC 0.289 vs 0.277, Hayes et al. 2024).
- `lira`: offline per-example LiRA (Carlini et al. 2022). The OUT references of a sample (trained without it)
  give its non-member signal distribution N(mu_x, sigma^2); the score is (signal - mu_x) / sigma, monotone
  in the one-sided likelihood. Signal: logit-scaled confidence (classifiers), mean token log-prob (LMs).
  sigma is pooled over samples ("fixed variance"): with K <= 8 references each sample has only K/2 OUT
  models, too few for its own variance.
- language models also: `zlib_ratio` (loss / zlib length), `min_k_20` and `min_k_40`, and `ref_ratio`
  (loss minus the mean loss of the sample's OUT references).

Per attack and model: AUC and TPR at each policy FPR, forget vs held-out and retain vs held-out, and paired
bootstrap differences candidate - reference, served - reference, relearned - reference (forget) and
candidate - served (retain).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from workers.verification.checks import (
    FORGET_PAIRS,
    CheckResult,
    EvalSets,
    SplitSignals,
    metric_name,
    versus,
)
from workers.verification.gate import Policy, primary_attack
from workers.verification.references import ReferenceSet
from workers.verification.signals import classifier_confidence
from workers.verification.stats import (
    Estimate,
    auc,
    auc_difference,
    auc_estimate,
    tpr_at_fpr,
    tpr_difference,
    tpr_estimate,
)

LM_ATTACKS = ("zlib_ratio", "min_k_20", "min_k_40")


def _lira_signal(loss: np.ndarray, is_lm: bool) -> np.ndarray:
    return -np.asarray(loss, float) if is_lm else classifier_confidence(loss)


@dataclass
class LiraStatistics:
    """Per-sample OUT distribution of every evaluated sample, from the cached references."""

    mu: np.ndarray  # mean OUT signal, aligned with EvalSets.all
    sigma: float  # pooled OUT standard deviation
    out_mean_loss: np.ndarray  # mean OUT loss (for the reference-loss ratio)
    n_out: np.ndarray  # OUT references per sample
    k: int
    losses: np.ndarray  # [K, n] every reference's loss
    out: np.ndarray  # [K, n] True where the reference never saw the sample's subject


def lira_statistics(refs: ReferenceSet, sets: EvalSets, is_lm: bool, batch_size: int = 64) -> LiraStatistics:
    losses = refs.losses(sets.all, batch_size)  # [K, n]
    out = ~refs.membership(sets.all)
    n_out = out.sum(axis=0)
    if (n_out == 0).any():
        raise ValueError("a sample is IN for every reference model: the references' split is broken")
    signal = _lira_signal(losses, is_lm)
    mu = np.where(out, signal, 0).sum(axis=0) / n_out
    squares = np.where(out, (signal - mu) ** 2, 0).sum(axis=0)
    dof = np.clip(n_out - 1, 0, None).sum()
    sigma = float(np.sqrt(squares.sum() / dof)) if dof > 0 else float("nan")
    out_mean_loss = np.where(out, losses, 0).sum(axis=0) / n_out
    return LiraStatistics(mu, max(sigma, 1e-6), out_mean_loss, n_out, refs.k, losses, out)


def reference_scores(lira: LiraStatistics, j: int, is_lm: bool) -> dict[str, np.ndarray]:
    """Attack scores of reference model j itself, each sample's OUT statistics taken without j.

    On the samples whose subject j never saw, reference j IS an exact retrain: its scores show where
    exact retrains land, training randomness included (see `retrain_band`).
    """
    signal = _lira_signal(lira.losses, is_lm)
    own = lira.out[j]
    others = np.maximum(lira.n_out - own, 1)
    mu = (np.where(lira.out, signal, 0).sum(axis=0) - np.where(own, signal[j], 0)) / others
    ref_loss = (np.where(lira.out, lira.losses, 0).sum(axis=0) - np.where(own, lira.losses[j], 0)) / others
    scores = {"loss": -lira.losses[j], "lira": (signal[j] - mu) / lira.sigma}
    if is_lm:
        scores["ref_ratio"] = -(lira.losses[j] - ref_loss)
    return scores


def retrain_band(
    lira: LiraStatistics, sets: EvalSets, is_lm: bool, fpr: float
) -> dict[str, dict[str, list[float]]]:
    """attack -> {"auc": [...], "tpr": [...]}: forget-vs-heldout AUC and TPR of each reference model that
    never saw some of the forget subjects, on those subjects' samples.

    Why: the bootstrap intervals cover the sampling of forget and held-out samples, not training
    randomness, yet exact retrains that differ only in data order can land far apart (digits, one subject:
    LiRA AUC 0.05 to 0.92). A candidate is only held to be remembering when it is also beyond where
    exact retrains land. Needs K >= 4 (each sample then has another OUT reference for its statistics).
    """
    n_forget = len(sets.forget)
    out_forget = lira.out[:, :n_forget]
    usable = n_forget > 0 and (lira.n_out[:n_forget] >= 2).all()
    band: dict[str, dict[str, list[float]]] = {}
    if not usable:
        return band
    for j in range(lira.k):
        mask = out_forget[j]
        if mask.sum() < max(1, n_forget // 4):
            continue
        for attack, score in reference_scores(lira, j, is_lm).items():
            parts = sets.split(score)
            entry = band.setdefault(attack, {"auc": [], "tpr": []})
            entry["auc"].append(auc(parts["forget"][mask], parts["heldout"]))
            entry["tpr"].append(tpr_at_fpr(parts["forget"][mask], parts["heldout"], fpr))
    return band


def attack_scores(
    sets: EvalSets, signals: SplitSignals, lira: LiraStatistics | None, is_lm: bool
) -> dict[str, dict[str, np.ndarray]]:
    """attack -> split -> per-sample membership score of one model (higher = member)."""
    scores: dict[str, dict[str, np.ndarray]] = {"loss": {k: -v["loss"] for k, v in signals.items()}}
    if is_lm:
        scores["zlib_ratio"] = {k: -v["zlib_ratio"] for k, v in signals.items()}
        for attack in LM_ATTACKS[1:]:
            scores[attack] = {k: v[attack] for k, v in signals.items()}
    if lira is not None:
        mu, ref_loss = sets.split(lira.mu), sets.split(lira.out_mean_loss)
        scores["lira"] = {
            k: (_lira_signal(v["loss"], is_lm) - mu[k]) / lira.sigma for k, v in signals.items()
        }
        if is_lm:
            scores["ref_ratio"] = {k: -(v["loss"] - ref_loss[k]) for k, v in signals.items()}
    return scores


def check_mia(
    sets: EvalSets,
    signals: Mapping[str, SplitSignals],
    lira: LiraStatistics | None,
    is_lm: bool,
    policy: Policy,
) -> CheckResult:
    started = time.perf_counter()
    result = CheckResult("mia")
    if lira is None:
        result.not_checked.append(
            "LiRA (no reference trainer: the per-example attack needs reference models)"
        )
    else:
        result.values["lira.references"] = lira.k
        result.values["lira.sigma"] = lira.sigma
    scores = {role: attack_scores(sets, s, lira, is_lm) for role, s in signals.items()}
    nb, seed = policy.n_boot, policy.seed
    for role, by_attack in scores.items():
        for attack, s in by_attack.items():
            result.metrics[metric_name(attack, "forget_auc", role)] = auc_estimate(
                s["forget"], s["heldout"], nb, seed
            )
            result.metrics[metric_name(attack, "retain_auc", role)] = auc_estimate(
                s["retain"], s["heldout"], nb, seed
            )
            for fpr in policy.fprs:
                result.metrics[metric_name(attack, f"tpr_{fpr:g}", role)] = tpr_estimate(
                    s["forget"], s["heldout"], fpr, nb, seed
                )
    for a, b in FORGET_PAIRS:
        if a not in scores or b not in scores:
            continue
        for attack in scores[a]:
            sa, sb = scores[a][attack], scores[b][attack]
            result.metrics[metric_name(attack, "forget_auc", a, b)] = auc_difference(
                sa["forget"], sa["heldout"], sb["forget"], sb["heldout"], nb, seed
            )
            result.metrics[metric_name(attack, f"tpr_{policy.gate_fpr:g}", a, b)] = tpr_difference(
                sa["forget"], sa["heldout"], sb["forget"], sb["heldout"], policy.gate_fpr, nb, seed
            )
    for base in ("served", "reference"):
        if "candidate" not in scores or base not in scores:
            continue
        for attack in scores["candidate"]:
            sa, sb = scores["candidate"][attack], scores[base][attack]
            result.metrics[metric_name(attack, "retain_auc", "candidate", base)] = auc_difference(
                sa["retain"], sa["heldout"], sb["retain"], sb["heldout"], nb, seed
            )
    if lira is not None:
        _add_retrain_band(result, scores, lira, sets, is_lm, policy)
    attack = primary_attack(result.metrics, policy) or "loss"
    result.values["primary_attack"] = attack
    result.plot_data = {
        "attack": attack,
        "scores": {role: by_attack[attack] for role, by_attack in scores.items()},
        "loss": {role: {k: v["loss"] for k, v in s.items()} for role, s in signals.items()},
    }
    result.seconds = time.perf_counter() - started
    return result


def _add_retrain_band(
    result: CheckResult,
    scores: Mapping[str, dict[str, dict[str, np.ndarray]]],
    lira: LiraStatistics,
    sets: EvalSets,
    is_lm: bool,
    policy: Policy,
) -> None:
    """Where exact retrains land, from the OUT references (and the reference model when there is one).

    Without a reference model the band's mean stands in for it: "<role> minus reference" is then the
    role's value minus that mean, its interval the role's own interval shifted by it.
    """
    gate_tag = f"tpr_{policy.gate_fpr:g}"
    band = retrain_band(lira, sets, is_lm, policy.gate_fpr)
    # a reference's statistics without itself rest on its K/2 - 1 fellow OUT references: below 3 of them
    # (K < 8) its scores are too noisy to show a spread, though their mean still stands in for a reference
    spread_ok = bool(band) and int(lira.n_out[: len(sets.forget)].min()) >= 4
    if not spread_ok:
        result.not_checked.append(f"spread of exact retrains (needs >= 8 LiRA references, K={lira.k})")
    for attack, entry in band.items():
        for metric, values in (("forget_auc", entry["auc"]), (gate_tag, entry["tpr"])):
            if "reference" in scores:  # the reference is one more exact retrain
                values.append(result.metrics[metric_name(attack, metric, "reference")].value)
            else:
                mean = float(np.mean(values))
                for role in [r for r in ("candidate", "served", "relearned") if r in scores]:
                    own = result.metrics[metric_name(attack, metric, role)]
                    result.metrics[metric_name(attack, metric, role, versus(role))] = Estimate(
                        own.value - mean, own.low - mean, own.high - mean, own.n, own.groups
                    )
            if spread_ok:
                result.values[f"{attack}.{metric}.retrain_band"] = values
    if band and "reference" not in scores:
        result.values["reference"] = f"cached OUT reference models (K={lira.k}): no retrained model given"
