"""The promotion gate: one policy per model, rules over the checks' numbers, and a three-way verdict.

Every threshold lives in `Policy`, defined as GatePolicy in app/registry/policy.py (the API validates a
model's gate overrides against it); the defaults are VERIFICATION.md's starting gate.

How a rule decides. A rule compares the candidate with the exact-retrain reference (or, for collateral
damage, with the served version) through a paired bootstrap interval of the difference. It FAILS only when
the point estimate is beyond the policy's tolerance AND the interval excludes "no difference": the
tolerance is then effectively max(tolerance, interval half-width), so small forget sets (one subject gives
about +-0.06 AUC) widen it instead of producing chance failures. Those intervals cover the sampling of
samples, not training randomness: a membership rule therefore also requires the candidate to lie above
where exact retrains land (the LiRA references that never saw the forget subjects, when there are enough
of them; on digits, exact retrains differing only in seed scored LiRA AUC 0.05 to 0.92 on one subject).
Without a retrained model those references' mean stands in for the reference.

Power. Each forgetting rule is also applied to the served version in the candidate's place. If the served
version would pass a rule too, that rule cannot tell forgetting from doing nothing. The verdict is:
- fail: some rule fails for the candidate (each failing rule is listed);
- pass: no rule fails and at least one forgetting rule has power (the served version fails it);
- inconclusive: no rule fails but no forgetting rule has power. Never promoted for approximate methods.
An exact method's candidate (retraining, DeepObliviate without early stop) is judged on utility only and
labelled "exact by construction" (`Policy.trust_exact`); its other numbers are still reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from app.registry.policy import GatePolicy as Policy
from workers.verification.checks import CheckResult, metric_name, versus
from workers.verification.stats import Estimate

PASS, FAIL, INCONCLUSIVE, NOT_CHECKED = "pass", "fail", "inconclusive", "not_checked"
EXACT_LABEL = "exact by construction"


@dataclass
class RuleOutcome:
    rule: str
    kind: str  # "forgetting" (needs power), "utility" or "collateral"
    status: str  # pass / fail / not_checked
    served_status: str | None  # the same rule applied to the served version: power when it fails
    detail: str

    @property
    def powered(self) -> bool:
        return self.kind == "forgetting" and self.served_status == FAIL

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "powered": self.powered}


@dataclass
class Verdict:
    verdict: str
    reasons: list[str]
    rules: list[RuleOutcome] = field(default_factory=list)
    label: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "passed": self.passed,
            "label": self.label,
            "reasons": self.reasons,
            "rules": [r.to_dict() for r in self.rules],
        }


Metrics = Mapping[str, Estimate]
Values = Mapping[str, Any]


def _above(d: Estimate | None, tolerance: float) -> str:
    """fail when d is beyond +tolerance and its interval excludes 0 (material and significant)."""
    if d is None or d.value != d.value:  # missing or NaN
        return NOT_CHECKED
    return FAIL if d.value > tolerance and d.low > 0 else PASS


def _below(d: Estimate | None, tolerance: float) -> str:
    if d is None or d.value != d.value:
        return NOT_CHECKED
    return FAIL if d.value < -tolerance and d.high < 0 else PASS


def _fmt(d: Estimate | None) -> str:
    if d is None:
        return "n/a"
    return f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}] (n={d.n})"


def primary_attack(metrics: Metrics, policy: Policy) -> str | None:
    for attack in policy.primary_attacks:
        if metric_name(attack, "forget_auc", "candidate", "reference") in metrics:
            return attack
    return None


def band_limits(band: list[float] | None, policy: Policy) -> tuple[float, float] | None:
    """(low, high) of where exact retrains land: the observed range widened to mean -+ sds * sd."""
    values = np.asarray([v for v in (band or []) if v == v], float)
    if values.size < max(1, policy.min_band_models):
        return None
    sds = policy.retrain_band_sds
    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return min(values.min(), values.mean() - sds * sd), max(values.max(), values.mean() + sds * sd)


def _compare(
    metrics: Metrics, values: Values, policy: Policy, attack: str, metric: str, role: str, tolerance: float
) -> str:
    """Above the reference (material and significant) AND above the band of exact retrains."""
    status = _above(metrics.get(metric_name(attack, metric, role, versus(role))), tolerance)
    limits = band_limits(values.get(f"{attack}.{metric}.retrain_band"), policy)
    own = metrics.get(metric_name(attack, metric, role))
    if status == FAIL and limits is not None and own is not None and own.value <= limits[1] + tolerance:
        return PASS
    return status


def _band_text(values: Values, policy: Policy, attack: str, metric: str) -> str:
    band = values.get(f"{attack}.{metric}.retrain_band")
    limits = band_limits(band, policy)
    if limits is None:
        return f"exact-retrain spread not used ({len(band or [])} exact retrains < {policy.min_band_models})"
    n = len(band)
    return f"exact retrains land in [{limits[0]:.3f}, {limits[1]:.3f}] ({n} models)"


def _mia_rules(metrics: Metrics, values: Values, policy: Policy, role: str, suffix: str) -> list[RuleOutcome]:
    attack = primary_attack(metrics, policy)
    if attack is None:
        return [RuleOutcome(f"mia_forget_auc{suffix}", "forgetting", NOT_CHECKED, None, "no attack compared")]
    rules = []
    for metric, tolerance, label in (
        ("forget_auc", policy.mia_auc_tolerance, "forget-vs-heldout AUC"),
        (f"tpr_{policy.gate_fpr:g}", policy.mia_tpr_tolerance, f"TPR at {policy.gate_fpr:g} FPR"),
    ):
        own = metrics.get(metric_name(attack, metric, role))
        served = metrics.get(metric_name(attack, metric, "served"))
        d = metrics.get(metric_name(attack, metric, role, versus(role)))
        rules.append(
            RuleOutcome(
                f"mia_{'forget_auc' if metric == 'forget_auc' else 'forget_tpr'}{suffix}",
                "forgetting",
                _compare(metrics, values, policy, attack, metric, role, tolerance),
                _compare(metrics, values, policy, attack, metric, "served", tolerance),
                f"{attack} {label}: {role} {_fmt(own)}, served {_fmt(served)}, {role} minus {versus(role)} "
                f"{_fmt(d)}; {_band_text(values, policy, attack, metric)}; fails above the reference by "
                f"+{tolerance} (significant) and above every exact retrain",
            )
        )
    if not suffix:
        d = metrics.get(metric_name(attack, "forget_auc", role, "reference"))
        status = _below(d, policy.mia_auc_over_unlearning)
        limits = band_limits(values.get(f"{attack}.forget_auc.retrain_band"), policy)
        own = metrics.get(metric_name(attack, "forget_auc", role))
        if status == FAIL and limits is not None and own is not None:
            status = FAIL if own.value < limits[0] - policy.mia_auc_over_unlearning else PASS
        rules.append(
            RuleOutcome(
                "mia_over_unlearning",
                "collateral",
                status,
                None,
                f"{attack} forget AUC minus reference {_fmt(d)}: fails below "
                f"-{policy.mia_auc_over_unlearning} (significant) and below every exact retrain "
                f"({_band_text(values, policy, attack, 'forget_auc')})",
            )
        )
    return rules


def _retain_rule(metrics: Metrics, policy: Policy) -> RuleOutcome:
    """The others' exposure must not grow. An exact retrain may itself expose them a little more than the
    served model did (removing records exposes their neighbours: the "privacy onion", Carlini et al.
    2022), so with a retrain reference the candidate fails only if it is also beyond the reference."""
    attack = primary_attack(metrics, policy) or ""
    tolerance = policy.retain_auc_tolerance
    d = metrics.get(metric_name(attack, "retain_auc", "candidate", "served"))
    d_reference = metrics.get(metric_name(attack, "retain_auc", "candidate", "reference"))
    status = _above(d, tolerance)
    if status == FAIL and _above(d_reference, tolerance) == PASS:
        status = PASS
    return RuleOutcome(
        "mia_retain_exposure",
        "collateral",
        status,
        None,
        f"{attack} retain-vs-heldout AUC, candidate minus served {_fmt(d)}, minus reference "
        f"{_fmt(d_reference)}; fails above +{tolerance} (significant) against both",
    )


def _utility_rules(metrics: Metrics, policy: Policy) -> list[RuleOutcome]:
    """Accuracy or perplexity ratio to the exact-retrain reference (to served when there is none)."""
    rules = []
    for split in ("retain", "heldout"):
        status, detail = NOT_CHECKED, f"no utility comparison on {split}"
        for base in ("reference", "served"):
            acc = metrics.get(metric_name("utility", f"accuracy_{split}", "candidate", base))
            ppl = metrics.get(metric_name("utility", f"perplexity_{split}", "candidate", base))
            if acc is not None:  # a ratio is significant when its interval excludes 1
                status = FAIL if acc.value < policy.min_accuracy_ratio and acc.high < 1 else PASS
                detail = (
                    f"accuracy ratio candidate/{base} on {split} {_fmt(acc)}, min {policy.min_accuracy_ratio}"
                )
            elif ppl is not None:
                status = FAIL if ppl.value > policy.max_perplexity_ratio and ppl.low > 1 else PASS
                detail = (
                    f"perplexity candidate/{base} on {split} {_fmt(ppl)}, max {policy.max_perplexity_ratio}"
                )
            else:
                continue
            break
        rules.append(RuleOutcome(f"utility_{split}", "utility", status, None, detail))
    return rules


def _canary_rule(metrics: Metrics, values: Values, policy: Policy, role: str, suffix: str) -> RuleOutcome:
    def status(who: str) -> str:
        d = metrics.get(metric_name("canary", "deleted_minus_control_bits", who))
        p = values.get(f"canary.deleted_pvalue.{who}")
        if d is None or p is None or p != p:
            return NOT_CHECKED
        return FAIL if d.value > policy.canary_exposure_tolerance_bits and p < policy.canary_alpha else PASS

    d = metrics.get(metric_name("canary", "deleted_minus_control_bits", role))
    p = values.get(f"canary.deleted_pvalue.{role}")
    return RuleOutcome(
        f"canary_exposure{suffix}",
        "forgetting",
        status(role),
        status("served"),
        f"deleted canaries' mean exposure minus never-inserted ones' {_fmt(d)} bits, p={_p(p)}; fails above "
        f"{policy.canary_exposure_tolerance_bits} bits when p < {policy.canary_alpha}",
    )


def _backdoor_rule(values: Values, policy: Policy, role: str, suffix: str) -> RuleOutcome:
    def status(who: str) -> str:
        p = values.get(f"backdoor.pvalue.{who}")
        if p is None or p != p:
            return NOT_CHECKED
        return FAIL if p < policy.backdoor_alpha else PASS

    p = values.get(f"backdoor.pvalue.{role}")
    rate = values.get(f"backdoor.success_rate.{role}")
    base = values.get(f"backdoor.baseline_rate.{role}")
    return RuleOutcome(
        f"backdoor{suffix}",
        "forgetting",
        status(role),
        status("served"),
        f"trigger success {_p(rate)} vs clean baseline {_p(base)}, binomial p={_p(p)}; fails when p < "
        f"{policy.backdoor_alpha}",
    )


def _p(x: Any) -> str:
    return "n/a" if x is None or x != x else f"{x:.3g}"


def evaluate_rules(results: Mapping[str, CheckResult], policy: Policy) -> list[RuleOutcome]:
    metrics: dict[str, Estimate] = {}
    values: dict[str, Any] = {}
    for r in results.values():
        metrics.update(r.metrics)
        values.update(r.values)
    rules = [
        *_utility_rules(metrics, policy),
        *_mia_rules(metrics, values, policy, "candidate", ""),
        _retain_rule(metrics, policy),
    ]
    rules += [
        _canary_rule(metrics, values, policy, "candidate", ""),
        _backdoor_rule(values, policy, "candidate", ""),
    ]
    if "relearning" in results and not results["relearning"].not_checked:
        # after a short fine-tune on retain data the forgotten must stay forgotten; the power of each
        # probe rule is that of the same rule on the (already remembering) served version
        rules += _mia_rules(metrics, values, policy, "relearned", "_after_relearning")
        rules += [
            _canary_rule(metrics, values, policy, "relearned", "_after_relearning"),
            _backdoor_rule(values, policy, "relearned", "_after_relearning"),
        ]
    return rules


def decide(rules: list[RuleOutcome], exact: bool, policy: Policy) -> Verdict:
    if exact and policy.trust_exact:
        failed = [r for r in rules if r.kind == "utility" and r.status == FAIL]
        if failed:
            return Verdict(FAIL, [f"{r.rule}: {r.detail}" for r in failed], rules)
        return Verdict(PASS, [f"exact method: judged on utility only ({EXACT_LABEL})"], rules, EXACT_LABEL)
    failed = [r for r in rules if r.status == FAIL]
    if failed:
        return Verdict(FAIL, [f"{r.rule}: {r.detail}" for r in failed], rules)
    powered = [r for r in rules if r.powered]
    if not powered:
        return Verdict(
            INCONCLUSIVE,
            ["no forgetting check has power: the untouched served version passes every one of them too"],
            rules,
        )
    return Verdict(
        PASS, [f"{r.rule} passed with power (served fails it): {r.detail}" for r in powered], rules
    )


def gate(results: Mapping[str, CheckResult], exact: bool, policy: Policy) -> Verdict:
    return decide(evaluate_rules(results, policy), exact, policy)
