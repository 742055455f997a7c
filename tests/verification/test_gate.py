"""The gate's decision rules on hand-made numbers: three verdicts, power, exact methods, thresholds."""

from __future__ import annotations

import pytest

from workers.verification.checks import CheckResult
from workers.verification.gate import EXACT_LABEL, Policy, gate
from workers.verification.stats import Estimate

pytestmark = pytest.mark.ml


def est(value: float, half_width: float = 0.05, n: int = 100) -> Estimate:
    return Estimate(value, value - half_width, value + half_width, n)


def results(candidate_minus_ref: float, served_minus_ref: float, accuracy_ratio: float = 1.0) -> dict:
    mia = CheckResult("mia")
    for role, d in (("candidate", candidate_minus_ref), ("served", served_minus_ref)):
        mia.metrics[f"lira.forget_auc.{role}-reference"] = est(d)
        mia.metrics[f"lira.forget_auc.{role}"] = est(0.5 + d)
        mia.metrics[f"lira.tpr_0.01.{role}-reference"] = est(0.0, 0.0)
    mia.metrics["lira.retain_auc.candidate-served"] = est(0.0)
    utility = CheckResult("utility")
    for split in ("retain", "heldout"):
        utility.metrics[f"utility.accuracy_{split}.candidate-reference"] = est(accuracy_ratio, 0.005)
    return {"mia": mia, "utility": utility}


def rule(verdict, name: str):
    return next(r for r in verdict.rules if r.rule == name)


def test_candidate_that_remembers_like_the_served_model_fails_naming_the_rule() -> None:
    verdict = gate(results(0.40, 0.40), exact=False, policy=Policy())
    assert verdict.verdict == "fail"
    assert any(reason.startswith("mia_forget_auc") for reason in verdict.reasons)
    assert rule(verdict, "mia_forget_auc").powered


def test_candidate_like_the_reference_passes_when_the_check_has_power() -> None:
    verdict = gate(results(0.01, 0.40), exact=False, policy=Policy())
    assert verdict.verdict == "pass" and verdict.passed
    assert any("mia_forget_auc" in reason for reason in verdict.reasons)


def test_no_power_is_inconclusive_not_pass() -> None:
    verdict = gate(results(0.01, 0.01), exact=False, policy=Policy())
    assert verdict.verdict == "inconclusive" and not verdict.passed


def test_difference_within_its_interval_is_not_a_failure() -> None:
    """+0.06 is beyond the fixed 0.03 tolerance but not significant with a +-0.08 interval."""
    res = results(0.0, 0.40)
    res["mia"].metrics["lira.forget_auc.candidate-reference"] = est(0.06, 0.08)
    assert gate(res, exact=False, policy=Policy()).verdict == "pass"


def test_exposing_the_others_fails_unless_an_exact_retrain_exposes_them_as_much() -> None:
    exposing = results(0.01, 0.40)
    exposing["mia"].metrics["lira.retain_auc.candidate-served"] = est(0.08, 0.02)
    assert rule(gate(exposing, exact=False, policy=Policy()), "mia_retain_exposure").status == "fail"

    exposing["mia"].metrics["lira.retain_auc.candidate-reference"] = est(0.08, 0.02)
    assert rule(gate(exposing, exact=False, policy=Policy()), "mia_retain_exposure").status == "fail"

    # The retrain reference is as exposing (removing records exposed their neighbours): not the method.
    exposing["mia"].metrics["lira.retain_auc.candidate-reference"] = est(0.005, 0.02)
    verdict = gate(exposing, exact=False, policy=Policy())
    assert rule(verdict, "mia_retain_exposure").status == "pass" and verdict.verdict == "pass"


def test_over_unlearning_fails() -> None:
    verdict = gate(results(-0.30, 0.40), exact=False, policy=Policy())
    assert verdict.verdict == "fail"
    assert rule(verdict, "mia_over_unlearning").status == "fail"


def test_utility_loss_fails_even_when_forgetting_passes() -> None:
    verdict = gate(results(0.0, 0.40, accuracy_ratio=0.95), exact=False, policy=Policy())
    assert verdict.verdict == "fail"
    assert rule(verdict, "utility_retain").status == "fail"


def test_exact_method_is_judged_on_utility_only() -> None:
    passed = gate(results(0.40, 0.40), exact=True, policy=Policy())
    assert passed.verdict == "pass" and passed.label == EXACT_LABEL
    refused = gate(results(0.0, 0.40, accuracy_ratio=0.9), exact=True, policy=Policy())
    assert refused.verdict == "fail"
    untrusted = gate(results(0.40, 0.40), exact=True, policy=Policy(trust_exact=False))
    assert untrusted.verdict == "fail"


def test_spread_of_exact_retrains_keeps_a_retrain_like_value_from_failing() -> None:
    res = results(0.30, 0.45)
    res["mia"].values["lira.forget_auc.retrain_band"] = [0.50, 0.62, 0.81, 0.70, 0.55]
    verdict = gate(res, exact=False, policy=Policy())
    assert rule(verdict, "mia_forget_auc").status == "pass"  # 0.80 sits among the exact retrains
    assert rule(verdict, "mia_forget_auc").served_status == "fail"  # 0.95 is above all of them


def test_policy_overrides_are_checked() -> None:
    policy = Policy.from_dict({"mia_auc_tolerance": 0.05, "fprs": [0.01]})
    assert policy.mia_auc_tolerance == 0.05 and policy.fprs == (0.01,)
    with pytest.raises(ValueError, match="unknown policy settings"):
        Policy.from_dict({"mia_auc_tolerence": 0.05})
