"""The promotion gate: one policy per model, rules over the checks' numbers, and a three-way verdict.

Every threshold lives in `Policy`, defined as GatePolicy in app/registry/policy.py (the API validates a
model's gate overrides against it); its defaults are the calibrated gate of VERIFICATION.md, and the
operating characteristics they give (false rejection of exact retrains the gate never saw, false
acceptance of models that forgot nothing) are measured in docs/benchmarks.md.

How a rule decides. A forgetting rule holds a statistic of the candidate against where exact retrains of
the same deletion land (workers.verification.retrain_null: per subject, from the references that never saw
it). It FAILS only when the candidate is beyond the null's one-sided prediction bound at `null_alpha` AND
farther from the null's mean than the rule's tolerance: significant and material. About ten rules run per
deletion; at 0.005 each the chance that an exact retrain fails any is at most 5 % when the nulls are right.
Utility and retain exposure are held against the spread of full-data models that differ only in seed (the
served version and its seed replicas), with the policy's ratio as the material part; without replicas the
fixed ratio and the cluster-bootstrap interval of candidate / served decide, and the report says so.

Power. Each forgetting rule is also applied to the served version in the candidate's place. If the served
version would pass a rule too, that rule cannot tell forgetting from doing nothing.

No pass without measurement. A rule whose inputs are missing or too few (`min_samples` held-out samples,
two OUT references per forget subject) is `not_checked`, never passed. The verdict is:
- fail: some rule fails for the candidate (each failing rule is listed);
- pass: no rule fails, at least one forgetting rule has power (the served version fails it) and the
  held-out utility rule was measured;
- inconclusive: otherwise. Never promoted for approximate methods.
An exact method's candidate (retraining, DeepObliviate without early stop) is judged on utility only and
labelled "exact by construction" (`Policy.trust_exact`); it too needs the held-out utility measured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from app.registry.policy import GatePolicy as Policy
from workers.verification.checks import CheckResult, metric_name
from workers.verification.stats import Estimate, t_quantile

PASS, FAIL, INCONCLUSIVE, NOT_CHECKED = "pass", "fail", "inconclusive", "not_checked"
EXACT_LABEL = "exact by construction"


@dataclass
class RuleOutcome:
    rule: str
    kind: str  # "forgetting" (needs power), "utility" or "collateral"
    status: str  # pass / fail / not_checked
    served_status: str | None  # the same rule applied to the served version: power when it fails
    detail: str
    # the numbers the summary sentence reads: the judged value, the null's mean and its bound, served's
    numbers: dict[str, float] = field(default_factory=dict)

    @property
    def powered(self) -> bool:
        return self.kind == "forgetting" and self.served_status == FAIL

    def to_dict(self) -> dict[str, Any]:
        numbers = {k: (round(v, 4) if np.isfinite(v) else None) for k, v in self.numbers.items()}
        return {**asdict(self), "numbers": numbers, "powered": self.powered}


@dataclass
class Verdict:
    verdict: str
    reasons: list[str]
    rules: list[RuleOutcome] = field(default_factory=list)
    label: str | None = None
    summary: str = ""

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    @property
    def not_checked_rules(self) -> list[str]:
        return [r.rule for r in self.rules if r.status == NOT_CHECKED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "passed": self.passed,
            "label": self.label,
            "summary": self.summary,
            "reasons": self.reasons,
            "not_checked_rules": self.not_checked_rules,
            "rules": [r.to_dict() for r in self.rules],
        }


Metrics = Mapping[str, Estimate]
Values = Mapping[str, Any]


@dataclass(frozen=True)
class Evidence:
    """Every check's numbers, merged: what the rules read."""

    metrics: Metrics
    values: Values

    def value(self, name: str) -> float:
        estimate = self.metrics.get(name)
        return float("nan") if estimate is None else float(estimate.value)


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, int | float | np.floating) and bool(np.isfinite(x))


def _fmt(d: Estimate | None) -> str:
    if d is None:
        return "n/a"
    return f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}] (n={d.n})"


def _p(x: Any) -> str:
    return "n/a" if not _finite(x) else f"{x:.3g}"


def _heldout_count(evidence: Evidence) -> int:
    return int(evidence.values.get("samples.heldout", 0))


# -- forgetting rules against the exact-retrain null ------------------------------------------------


def _null_status(value: float, null: Any, alpha: float, tolerance: float, side: str) -> str:
    """fail when `value` is beyond the null's bound at `alpha` and beyond its mean by `tolerance`."""
    if null is None or not _finite(value) or not null.sd > 0:
        return NOT_CHECKED
    if side == "upper":
        return FAIL if value > null.upper(alpha) and value - null.mean > tolerance else PASS
    return FAIL if value < null.lower(alpha) and null.mean - value > tolerance else PASS


def _null_rule(
    evidence: Evidence,
    policy: Policy,
    *,
    rule: str,
    kind: str,
    statistic: str,
    null_key: str,
    role: str,
    tolerance: float,
    label: str,
    side: str = "upper",
) -> RuleOutcome:
    null = evidence.values.get(null_key)
    value = evidence.value(metric_name(*statistic.split(".", 1), role))
    served = evidence.value(metric_name(*statistic.split(".", 1), "served"))
    enough = _heldout_count(evidence) >= policy.min_samples
    alpha = policy.null_alpha if side == "upper" else policy.over_unlearning_alpha
    status = _null_status(value, null, alpha, tolerance, side) if enough else NOT_CHECKED
    served_status = (
        _null_status(served, null, alpha, tolerance, side) if enough and kind == "forgetting" else None
    )
    if null is None:
        detail = f"{label}: {role} {_p(value)}; not checked: no spread of exact retrains (too few references)"
        numbers = {"value": value, "served": served}
    elif not enough:
        detail = f"{label}: not checked: {_heldout_count(evidence)} held-out samples < {policy.min_samples}"
        numbers = {"value": value, "served": served}
    else:
        bound = null.upper(alpha) if side == "upper" else null.lower(alpha)
        direction = "above" if side == "upper" else "below"
        detail = (
            f"{label}: {role} {value:.3f}, served {served:.3f}; exact retrains land at {null.mean:.3f} "
            f"(sd {null.sd:.3f}, {null.min_draws}+ OUT references per subject, between-subject correlation "
            f"{null.correlation:.2f}); fails {direction} {bound:.3f} (p < {alpha:g}) when also "
            f"{tolerance:g} {direction} the mean"
        )
        numbers = {
            "value": value,
            "served": served,
            "null_mean": null.mean,
            "bound": bound,
            "null_sd": null.sd,
        }
    return RuleOutcome(rule, kind, status, served_status, detail, numbers)


def _mia_rules(evidence: Evidence, policy: Policy, role: str, suffix: str) -> list[RuleOutcome]:
    rules = []
    if not suffix:
        rules.append(
            _null_rule(
                evidence,
                policy,
                rule="mia_forget_auc",
                kind="forgetting",
                statistic="lira.forget_auc",
                null_key="lira.forget_auc.null",
                role=role,
                tolerance=policy.mia_auc_tolerance,
                label="LiRA forget-vs-held-out AUC",
            )
        )
    rules.append(
        _null_rule(
            evidence,
            policy,
            rule=f"mia_per_example{suffix}",
            kind="forgetting",
            statistic="lira.per_example",
            null_key="lira.per_example.null",
            role=role,
            tolerance=policy.per_example_tolerance,
            label="mean per-example LiRA score of the forget samples",
        )
    )
    if not suffix:
        rules.append(
            _null_rule(
                evidence,
                policy,
                rule="mia_over_unlearning",
                kind="collateral",
                statistic="lira.forget_auc",
                null_key="lira.forget_auc.null",
                role=role,
                tolerance=policy.mia_auc_over_unlearning,
                label="LiRA forget-vs-held-out AUC (over-unlearning: the forget set stands out as erased)",
                side="lower",
            )
        )
    return rules


# -- rules against the seed spread of full-data models ----------------------------------------------


def seed_bound(values: list[float], alpha: float, side: str) -> float:
    """Where one more full-data model of another seed lands (prediction bound at level 1 - alpha)."""
    spread = np.asarray([v for v in values if _finite(v)], float)
    if spread.size < 3:
        return float("nan")
    t = t_quantile(1 - alpha, spread.size - 1)
    width = t * spread.std(ddof=1) * np.sqrt(1 + 1 / spread.size)
    return float(spread.mean() + width if side == "upper" else spread.mean() - width)


def _retain_rule(evidence: Evidence, policy: Policy) -> RuleOutcome:
    """The others' exposure must not grow beyond what another seed gives (removing records exposes their
    neighbours a little: the "privacy onion", Carlini et al. 2022; the seed spread is wider than that)."""
    name = metric_name("lira", "retain_auc", "candidate")
    value, served = evidence.value(name), evidence.value(metric_name("lira", "retain_auc", "served"))
    spread = evidence.values.get("lira.retain_auc.seed_spread") or []
    numbers = {"value": value, "served": served}
    if _heldout_count(evidence) < policy.min_samples or not _finite(value) or not _finite(served):
        return RuleOutcome(
            "mia_retain_exposure", "collateral", NOT_CHECKED, None, "retain exposure not measured", numbers
        )
    bound = seed_bound(spread, policy.null_alpha, "upper")
    material = value - served > policy.retain_auc_tolerance
    if _finite(bound):
        status = FAIL if material and value > bound else PASS
        detail = (
            f"LiRA retain-vs-held-out AUC: candidate {value:.3f}, served {served:.3f}; full-data models of "
            f"other seeds reach up to {bound:.3f} ({len(spread)} models); fails above that when also "
            f"+{policy.retain_auc_tolerance} above served"
        )
        numbers["bound"] = bound
    else:
        d = evidence.metrics.get(metric_name("lira", "retain_auc", "candidate", "served"))
        status = FAIL if material and d is not None and d.low > 0 else PASS
        detail = (
            f"LiRA retain-vs-held-out AUC, candidate minus served {_fmt(d)}: fails above "
            f"+{policy.retain_auc_tolerance} when the cluster-bootstrap interval excludes 0 (no seed "
            "replicas: fixed tolerance)"
        )
    return RuleOutcome("mia_retain_exposure", "collateral", status, None, detail, numbers)


def _utility_rules(evidence: Evidence, policy: Policy, is_lm: bool) -> list[RuleOutcome]:
    """Accuracy (perplexity for language models) against where full-data models of other seeds land."""
    rules = []
    for split in ("retain", "heldout"):
        metric = f"perplexity_{split}" if is_lm else f"accuracy_{split}"
        value = evidence.value(metric_name("utility", metric, "candidate"))
        served = evidence.value(metric_name("utility", metric, "served"))
        n = int(evidence.values.get(f"samples.{split}", 0))
        numbers = {"value": value, "served": served}
        if n < policy.min_samples or not _finite(value) or not _finite(served):
            detail = f"utility on {split}: not checked ({n} samples < {policy.min_samples})"
            rules.append(RuleOutcome(f"utility_{split}", "utility", NOT_CHECKED, None, detail, numbers))
            continue
        spread = evidence.values.get(f"utility.{metric}.seed_spread") or []
        # what the deleted subjects' data was worth (workers.verification.utility): exact retrains land there
        shift = float(evidence.values.get(f"utility.{metric}.deletion_shift", 0.0))
        expected = served + shift
        ratio = value / expected if expected else float("nan")
        if is_lm:
            material, side, limit = ratio > policy.max_perplexity_ratio, "upper", policy.max_perplexity_ratio
        else:
            material, side, limit = ratio < policy.min_accuracy_ratio, "lower", policy.min_accuracy_ratio
        bound = seed_bound(spread, policy.null_alpha, side) + shift
        worse = (value > bound) if side == "upper" else (value < bound)
        name = "perplexity" if is_lm else "accuracy"
        if _finite(bound):
            status = FAIL if material and worse else PASS
            lacking = f", {shift:+.3g} for the deleted subjects' data" if shift else ""
            detail = (
                f"{name} on {split}: candidate {value:.4g}, served {served:.4g}; full-data models of other "
                f"seeds reach {'up to' if side == 'upper' else 'down to'} {bound - shift:.4g} ({len(spread)} "
                f"models){lacking}: {bound:.4g}; fails beyond that when the ratio to {expected:.4g} "
                f"({ratio:.3f}) is also {'above' if side == 'upper' else 'below'} {limit}"
            )
            numbers["bound"] = bound
            numbers["deletion_shift"] = shift
        else:  # no seed replicas: the fixed ratio, significant when its interval excludes 1
            d = evidence.metrics.get(metric_name("utility", metric, "candidate", "served"))
            significant = d is not None and (d.low > 1 if is_lm else d.high < 1)
            status = FAIL if material and significant else PASS
            detail = (
                f"{name} ratio candidate/served on {split} {_fmt(d)}, limit {limit} (no seed replicas: fixed "
                "ratio, cluster-bootstrap interval)"
            )
        numbers["ratio"] = ratio
        rules.append(RuleOutcome(f"utility_{split}", "utility", status, None, detail, numbers))
    return rules


# -- planted signals ----------------------------------------------------------------------------------


def _canary_rule(evidence: Evidence, policy: Policy, role: str, suffix: str) -> RuleOutcome:
    def status(who: str) -> str:
        d = evidence.metrics.get(metric_name("canary", "deleted_minus_control_bits", who))
        p = evidence.values.get(f"canary.deleted_pvalue.{who}")
        if d is None or not _finite(p):
            return NOT_CHECKED
        return FAIL if d.value > policy.canary_exposure_tolerance_bits and p < policy.canary_alpha else PASS

    d = evidence.metrics.get(metric_name("canary", "deleted_minus_control_bits", role))
    p = evidence.values.get(f"canary.deleted_pvalue.{role}")
    deleted = evidence.value(metric_name("canary", "exposure_deleted_bits", role))
    served = evidence.value(metric_name("canary", "exposure_deleted_bits", "served"))
    return RuleOutcome(
        f"canary_exposure{suffix}",
        "forgetting",
        status(role),
        status("served"),
        f"deleted canaries' mean exposure minus never-inserted ones' {_fmt(d)} bits, p={_p(p)}; fails above "
        f"{policy.canary_exposure_tolerance_bits} bits when p < {policy.canary_alpha} (a never-seen secret "
        "ranks uniformly among its candidates)",
        {"value": deleted, "served": served, "pvalue": float(p) if _finite(p) else float("nan")},
    )


def _backdoor_rule(evidence: Evidence, policy: Policy, role: str, suffix: str) -> RuleOutcome:
    rates = {
        "rate": evidence.values.get(f"backdoor.success_rate.{role}", float("nan")),
        "control": evidence.values.get(f"backdoor.baseline_rate.{role}", float("nan")),
        "served_rate": evidence.values.get("backdoor.success_rate.served", float("nan")),
    }
    if evidence.values.get("backdoor.excess.null") is not None:
        outcome = _null_rule(
            evidence,
            policy,
            rule=f"backdoor{suffix}",
            kind="forgetting",
            statistic="backdoor.excess",
            null_key="backdoor.excess.null",
            role=role,
            tolerance=policy.backdoor_tolerance,
            label="forget triggers' success rate beyond the same model's control triggers'",
        )
        outcome.numbers.update(rates)
        return outcome

    def status(who: str) -> str:  # no references: a binomial test over inputs is what is left
        p = evidence.values.get(f"backdoor.pvalue.{who}")
        return NOT_CHECKED if not _finite(p) else (FAIL if p < policy.null_alpha else PASS)

    p = evidence.values.get(f"backdoor.pvalue.{role}")
    rate = evidence.values.get(f"backdoor.success_rate.{role}")
    base = evidence.values.get(f"backdoor.baseline_rate.{role}")
    excess = evidence.value(metric_name("backdoor", "excess", role))
    return RuleOutcome(
        f"backdoor{suffix}",
        "forgetting",
        status(role),
        status("served"),
        f"trigger success {_p(rate)} vs the control triggers' rate {_p(base)}, binomial p={_p(p)}; fails "
        f"when p < {policy.null_alpha} (no references: binomial test over inputs)",
        {"value": excess, "served": evidence.value(metric_name("backdoor", "excess", "served")), **rates},
    )


# -- the verdict ----------------------------------------------------------------------------------------


def evaluate_rules(
    results: Mapping[str, CheckResult], policy: Policy, is_lm: bool = False
) -> list[RuleOutcome]:
    metrics: dict[str, Estimate] = {}
    values: dict[str, Any] = {}
    for r in results.values():
        metrics.update(r.metrics)
        values.update(r.values)
    evidence = Evidence(metrics, values)
    rules = [
        *_utility_rules(evidence, policy, is_lm),
        *_mia_rules(evidence, policy, "candidate", ""),
        _retain_rule(evidence, policy),
    ]
    planted: Callable[..., RuleOutcome] = _canary_rule if "canary" in results else _backdoor_rule
    if "canary" in results or "backdoor" in results:
        rules.append(planted(evidence, policy, "candidate", ""))
    if "relearning" in results and not results["relearning"].not_checked:
        # after a short fine-tune on retain data the forgotten must stay forgotten; the power of each
        # probe rule is that of the same rule on the (already remembering) served version
        rules += _mia_rules(evidence, policy, "relearned", "_after_relearning")
        if "canary" in results or "backdoor" in results:
            rules.append(planted(evidence, policy, "relearned", "_after_relearning"))
    return rules


def decide(rules: list[RuleOutcome], exact: bool, policy: Policy) -> Verdict:
    heldout_utility = next((r for r in rules if r.rule == "utility_heldout"), None)
    utility_measured = heldout_utility is not None and heldout_utility.status != NOT_CHECKED
    if exact and policy.trust_exact:
        failed = [r for r in rules if r.kind == "utility" and r.status == FAIL]
        if failed:
            verdict = Verdict(FAIL, [f"{r.rule}: {r.detail}" for r in failed], rules)
        elif not utility_measured:
            verdict = Verdict(
                INCONCLUSIVE,
                [
                    "exact method, but its utility on held-out data was not measured: nothing shows it "
                    "still works"
                ],
                rules,
            )
        else:
            verdict = Verdict(
                PASS, [f"exact method: judged on utility only ({EXACT_LABEL})"], rules, EXACT_LABEL
            )
        verdict.summary = summary_sentence(verdict)
        return verdict
    failed = [r for r in rules if r.status == FAIL]
    powered = [r for r in rules if r.powered and r.status == PASS]
    if failed:
        verdict = Verdict(FAIL, [f"{r.rule}: {r.detail}" for r in failed], rules)
    elif not powered:
        reason = (
            "no forgetting check has power: the untouched served version passes every one of them too"
            if any(r.kind == "forgetting" and r.status == PASS for r in rules)
            else "no forgetting check could be measured"
        )
        verdict = Verdict(INCONCLUSIVE, [reason], rules)
    elif not utility_measured:
        verdict = Verdict(INCONCLUSIVE, ["utility on held-out data was not measured"], rules)
    else:
        verdict = Verdict(
            PASS, [f"{r.rule} passed with power (served fails it): {r.detail}" for r in powered], rules
        )
    verdict.summary = summary_sentence(verdict)
    return verdict


def gate(results: Mapping[str, CheckResult], exact: bool, policy: Policy, is_lm: bool = False) -> Verdict:
    return decide(evaluate_rules(results, policy, is_lm), exact, policy)


# -- one sentence a compliance officer can read -----------------------------------------------------------

# Preference among rules for the sentence: the most readable measurement first.
SUMMARY_ORDER = ("mia_forget_auc", "backdoor", "canary_exposure", "mia_per_example")


def summary_sentence(verdict: Verdict) -> str:
    """The verdict in plain English, from the rule that best shows it (numbers included)."""
    by_name = {r.rule: r for r in verdict.rules}
    if verdict.verdict == PASS and verdict.label == EXACT_LABEL:
        return "Retrained without the deleted records (exact by construction); " + _utility_clause(by_name)
    if verdict.verdict == FAIL:
        failed = [r for r in verdict.rules if r.status == FAIL]
        first = next(
            (by_name[n] for n in SUMMARY_ORDER if n in by_name and by_name[n].status == FAIL), failed[0]
        )
        return _failure_sentence(first)
    if verdict.verdict == PASS:
        chosen = next(
            (
                by_name[n]
                for n in SUMMARY_ORDER
                if n in by_name and by_name[n].powered and by_name[n].status == PASS
            ),
            next(r for r in verdict.rules if r.powered and r.status == PASS),
        )
        return _pass_sentence(chosen) + " " + _utility_clause(by_name)
    unchecked = [r.rule for r in verdict.rules if r.status == NOT_CHECKED]
    if verdict.reasons and verdict.reasons[0].startswith("no forgetting check has power"):
        return (
            "Not vouched for: no check here can tell this model from one that forgot nothing (the untouched "
            "model passes them too), so the deletion is not promoted on this evidence."
        )
    return (
        "Not vouched for: too little was measured to judge this deletion"
        + (f" ({', '.join(unchecked[:4])} not checked)" if unchecked else "")
        + "; it is not promoted on this evidence."
    )


def _n(numbers: Mapping[str, float], key: str, style: str = ".2f") -> str:
    value = numbers.get(key, float("nan"))
    return "n/a" if not _finite(value) else format(value, style)


def _pass_sentence(rule: RuleOutcome) -> str:
    n = rule.numbers
    if rule.rule == "mia_forget_auc":
        return (
            "An attacker cannot tell the forgotten records from never-seen ones: "
            f"AUC {_n(n, 'value')}, where retraining without them gives {_n(n, 'null_mean')} "
            f"(the untouched model: {_n(n, 'served')})."
        )
    if rule.rule.startswith("backdoor"):
        return (
            f"The deleted subjects' planted triggers no longer work: they succeed on {_n(n, 'rate', '.0%')} "
            f"of inputs, like triggers never planted ({_n(n, 'control', '.0%')}); on the untouched model "
            f"{_n(n, 'served_rate', '.0%')}."
        )
    if rule.rule.startswith("canary"):
        return (
            f"The deleted secrets are no more exposed than never-inserted ones: {_n(n, 'value', '.1f')} bits "
            f"(the untouched model: {_n(n, 'served', '.1f')} bits)."
        )
    return (
        "Record by record the forgotten data looks never seen: membership score "
        f"{_n(n, 'value', '+.2f')} (0: like never-seen data), where retraining without it gives "
        f"{_n(n, 'null_mean', '+.2f')} (the untouched model: {_n(n, 'served', '+.2f')})."
    )


def _failure_sentence(rule: RuleOutcome) -> str:
    n = rule.numbers
    if rule.rule == "mia_forget_auc":
        return (
            "The model still remembers the deleted records: an attacker tells them from never-seen ones "
            f"with AUC {_n(n, 'value')}, where retraining without them gives at most {_n(n, 'bound')}."
        )
    if rule.rule == "mia_over_unlearning":
        return (
            f"The deleted records stand out as erased: AUC {_n(n, 'value')}, where retraining without them "
            f"gives at least {_n(n, 'bound')}; an attacker can spot what was removed."
        )
    if rule.rule.startswith("backdoor"):
        when = " after a short fine-tune" if "relearning" in rule.rule else ""
        return (
            f"The deleted subjects' planted triggers still work{when}: they succeed on "
            f"{_n(n, 'rate', '.0%')} of inputs, where triggers never planted succeed on "
            f"{_n(n, 'control', '.0%')} and retraining without the subjects leaves at most "
            f"{_n(n, 'bound', '.0%')} more."
        )
    if rule.rule.startswith("canary"):
        when = " after a short fine-tune" if "relearning" in rule.rule else ""
        return (
            f"The deleted secrets are still exposed{when}: {_n(n, 'value', '.1f')} bits, more than a "
            "never-seen secret gets by chance."
        )
    if rule.rule.startswith("mia_per_example"):
        when = " after a short fine-tune on the other data" if "relearning" in rule.rule else ""
        return (
            f"The model still remembers the deleted records{when}: membership score "
            f"{_n(n, 'value', '+.2f')}, where retraining without them gives at most {_n(n, 'bound', '+.2f')}."
        )
    if rule.rule == "mia_retain_exposure":
        return (
            f"Removing the records exposed the others: retain membership AUC {_n(n, 'value')}, above the "
            f"{_n(n, 'bound')} that retraining with another seed reaches."
        )
    if rule.kind == "utility":
        split = rule.rule.removeprefix("utility_").replace("heldout", "held-out data")
        return (
            f"The model lost too much utility on {split}: {_n(n, 'value', '.3g')} against the served model's "
            f"{_n(n, 'served', '.3g')}, beyond what retraining with another seed gives."
        )
    return f"The deletion failed the {rule.rule} check: {rule.detail}"


def _utility_clause(by_name: Mapping[str, RuleOutcome]) -> str:
    rule = by_name.get("utility_heldout")
    if rule is None or rule.status == NOT_CHECKED:
        return "held-out utility not measured."
    name = "perplexity" if "perplexity" in rule.detail else "accuracy"
    return (
        f"Held-out {name} {_n(rule.numbers, 'value', '.3g')} against the served model's "
        f"{_n(rule.numbers, 'served', '.3g')}, within what retraining gives."
    )
