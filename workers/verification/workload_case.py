"""One deletion on a reference workload, unlearned by a method and verified: what the CLI, the tests and the
benchmark all run.

`method` is a registered unlearning method, or "none" (the untouched served version, which the gate must
refuse). The exact-retrain reference is the workload's cached `retrained(subjects)`; the LiRA reference
models are trained once per served version and cached (their training time is reported apart).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.unlearning.base import (
    ProgressCallback,
    UnlearningContext,
    UnlearningResult,
    get_method,
    no_progress,
)
from workers.verification.gate import Policy
from workers.verification.probes import probes_for_workload
from workers.verification.report import Report, verify

UNTOUCHED = "none"
# Subjects forgotten per workload in tests and benchmarks (signal carriers first): enough planted triggers or
# canaries for the gate to have power (one bios person's canary alone gave p = 0.03 for the untouched model).
DEFAULT_FORGET_SUBJECTS = {"digits": 2, "bios": 5, "minilm": 3}


@dataclass
class CaseResult:
    workload: str
    method: str
    subjects: list[str]
    report: Report
    unlearning_seconds: float
    reference_retrain_seconds: float  # 0 when the exact-retrain reference came from the cache

    def summary(self) -> dict[str, Any]:
        """The numbers a reader compares across methods: verdict, deciding rules, key metrics, timings."""
        r = self.report
        attack = r.results["mia"].values.get("primary_attack", "loss")
        keys = [
            f"{attack}.forget_auc.candidate",
            f"{attack}.forget_auc.served",
            f"{attack}.forget_auc.reference",
            "canary.exposure_deleted_bits.candidate",
            "canary.exposure_control_bits.candidate",
            "backdoor.success_rate.candidate",
            "utility.accuracy_heldout.candidate",
            "utility.perplexity_heldout.candidate",
        ]
        metrics = {k: round(r.metric(k).value, 4) for k in keys if r.metric(k) is not None}
        return {
            "workload": self.workload,
            "method": self.method,
            "forget_subjects": len(self.subjects),
            "verdict": r.verdict.verdict,
            "label": r.verdict.label,
            "deciding_rules": [reason.split(":")[0] for reason in r.verdict.reasons],
            "metrics": metrics,
            "unlearning_seconds": round(self.unlearning_seconds, 2),
            "verification_seconds": round(r.timings["verification_seconds"], 2),
            "reference_training_seconds": round(r.timings.get("reference_training_seconds", 0.0), 2),
            "reference_training_seconds_when_built": r.timings.get("reference_training_seconds_when_built"),
        }


def run_case(
    workload_name: str,
    method: str,
    forget_subjects: int,
    size: str = "small",
    out_dir: Path | None = None,
    policy: Policy | None = None,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
    candidate: UnlearningResult | None = None,
    with_reference: bool = True,
    progress: ProgressCallback = no_progress,
) -> CaseResult:
    """Unlearn `forget_subjects` subjects of the workload with `method` (or take `candidate`), then verify.

    Without `with_reference` the gate runs as the service runs it for approximate methods: no retrained
    model, the cached LiRA references stand in for one.
    """
    from workers.unlearning.evaluation import scenario
    from workers.workloads import cache_dir, load_workload

    workload = load_workload(workload_name, size)
    served, record = workload.trained()
    case = scenario(workload, forget_subjects, seed)
    started = time.perf_counter()
    reference = workload.retrained(case.subjects) if with_reference else None
    reference_seconds = time.perf_counter() - started
    if candidate is None:
        candidate = (
            untouched(served) if method == UNTOUCHED else _unlearn(method, served, record, case, seed, config)
        )
    report = verify(
        served,
        candidate,
        reference,
        case.forget,
        case.retain,
        case.test,
        probes_for_workload(workload, case.subjects, case.test),
        policy,
        cache_dir("verification"),
        out_dir,
        training=record,
        training_samples=workload.train,
        progress=progress,
    )
    return CaseResult(workload_name, method, case.subjects, report, candidate.seconds, reference_seconds)


def untouched(served: Any) -> UnlearningResult:
    """The served version as its own "candidate": what forgetting nothing looks like."""
    return UnlearningResult(adapter=served, method=UNTOUCHED, exact=False, seconds=0.0)


def _unlearn(
    method: str, served: Any, record: Any, case: Any, seed: int, config: Mapping[str, Any] | None
) -> UnlearningResult:
    context = UnlearningContext(training=record, seed=seed)
    return get_method(method, **dict(config or {})).unlearn(
        served, case.forget, case.retain, case.validation, context
    )
