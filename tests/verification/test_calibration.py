"""The gate's calibration on every reference workload: it refuses forgetting nothing and a retain-only
fine-tune, and passes exact retraining (VERIFICATION.md: tests keep these three true)."""

from __future__ import annotations

import pytest

from tests.verification.conftest import SEED_METHODS, WORKLOADS, record_verdict

pytestmark = pytest.mark.ml


def powered_failures(case) -> list[str]:
    """Forgetting rules the candidate fails although an exact retrain (the reference) passes them."""
    return [r.rule for r in case.report.verdict.rules if r.status == "fail" and r.powered]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_untouched_model_fails(verified, workload: str) -> None:
    case = verified(workload, "none")
    assert case.report.verdict.verdict == "fail"
    assert powered_failures(case), "the untouched model must fail a forgetting check, not only utility"
    assert case.report.verdict.reasons


@pytest.mark.parametrize("workload", WORKLOADS)
def test_short_finetune_on_retain_fails(verified, workload: str) -> None:
    case = verified(workload, "finetune")
    assert case.report.verdict.verdict == "fail"
    assert powered_failures(case)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_exact_retraining_passes_as_exact_by_construction(verified, workload: str) -> None:
    case = verified(workload, "retrain")
    verdict = case.report.verdict
    assert verdict.verdict == "pass"
    assert verdict.label == "exact by construction"
    assert case.report.passed


@pytest.mark.parametrize("workload", WORKLOADS)
def test_exact_retraining_passes_every_check_when_not_trusted(verified, workload: str) -> None:
    """Judged like an approximate method the retrain still passes, and passes with power: the checks that
    refuse the untouched model do not refuse the model that truly forgot."""
    case = verified(workload, "retrain", exact_trusted=False)
    verdict = case.report.verdict
    assert verdict.verdict == "pass", verdict.reasons
    assert any(r.powered and r.status == "pass" for r in verdict.rules)


# lora_residual_alignment declines causal language models (tests/engine/test_methods.py checks its message).
SEED_CASES = [
    (workload, method)
    for method in SEED_METHODS
    for workload in WORKLOADS
    if (workload, method) != ("bios", "lora_residual_alignment")
]


@pytest.mark.parametrize(("workload", "method"), SEED_CASES)
def test_seed_method_verdict_is_reported(verified, workload: str, method: str) -> None:
    case = verified(workload, method)
    record_verdict(case)
    verdict = case.report.verdict
    assert verdict.verdict in ("pass", "fail", "inconclusive")
    assert verdict.reasons, "every verdict names the rules that decided it"
    if verdict.verdict == "pass" and not case.report.exact:
        assert any(r.powered for r in verdict.rules), "an approximate pass needs a check with power"


@pytest.mark.parametrize("workload", ["digits", "bios"])
def test_without_a_retrained_model_the_cached_references_stand_in(workload: str, tmp_path) -> None:
    """As the service runs the gate for approximate methods: no retrained model, still no pass for nothing."""
    from tests.verification.conftest import FORGET_SUBJECTS
    from workers.verification.workload_case import run_case

    case = run_case(workload, "none", FORGET_SUBJECTS[workload], out_dir=tmp_path, with_reference=False)
    verdict = case.report.verdict
    assert verdict.verdict == "fail"
    assert any(r.powered and r.status == "fail" for r in verdict.rules)
    assert "reference" in case.report.results["mia"].values  # says what stood in for the reference
