"""One deletion on a reference workload, unlearned by a method and verified: what the CLI, the tests and the
benchmark all run.

`method` is a registered unlearning method, or one of the gate's calibration candidates:
- "none": the untouched served version, which the gate must refuse;
- "ascent_one_step": a deliberately weak method, gradient ascent on the forget set stopped after one step.
With `candidate_seed` the candidate is made with that seed, independent of every seed the gate's references
use (workers.verification.references refuses the reserved ones): for `retrain` it is an exact retrain
trained from a fresh initialisation and data order, for other methods the seed of their run. Judged with
`trust_exact: false`, exact retrains of seeds the gate never saw are how its false-rejection rate is
measured (bench.gate).

The gate's references are trained once per lineage (here: the workload's trained version) and cached; their
training time is reported apart from the verification proper.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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
from workers.verification.references import check_candidate_seed
from workers.verification.report import Report, verify

UNTOUCHED = "none"
WEAK_ASCENT = "ascent_one_step"
CALIBRATION_CANDIDATES = (UNTOUCHED, WEAK_ASCENT)
# Subjects forgotten per workload in tests and benchmarks (signal carriers first): enough planted triggers or
# canaries for the gate to have power (on digits small the served model kept only some subjects' triggers).
DEFAULT_FORGET_SUBJECTS = {"digits": 2, "bios": 5, "minilm": 3}


@dataclass
class CaseResult:
    workload: str
    method: str
    subjects: list[str]
    report: Report
    unlearning_seconds: float
    reference_retrain_seconds: float  # 0 when the exact-retrain reference came from the cache (or none)
    candidate_seed: int | None = None

    def summary(self) -> dict[str, Any]:
        """The numbers a reader compares across methods: verdict, deciding rules, key metrics, timings."""
        r = self.report
        attack = r.results["mia"].values.get("primary_attack", "loss")
        keys = [
            f"{attack}.forget_auc.candidate",
            f"{attack}.forget_auc.served",
            f"{attack}.forget_auc.reference",
            f"{attack}.per_example.candidate",
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
            "candidate_seed": self.candidate_seed,
            "forget_subjects": len(self.subjects),
            "verdict": r.verdict.verdict,
            "label": r.verdict.label,
            "summary": r.verdict.summary,
            "deciding_rules": [reason.split(":")[0] for reason in r.verdict.reasons],
            "failed_rules": [rule.rule for rule in r.verdict.rules if rule.status == "fail"],
            "not_checked_rules": r.verdict.not_checked_rules,
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
    candidate_seed: int | None = None,
    subjects: Sequence[str] | None = None,
    progress: ProgressCallback = no_progress,
    layout: tuple[int, int] | None = None,
) -> CaseResult:
    """Unlearn `forget_subjects` subjects of the workload (`seed` picks which, or `subjects` names them) with
    `method` (or take `candidate`), then verify.

    `layout` (shards, slices): the workload's model trained in SISA's sharded layout (`Workload.sharded`),
    a lineage of its own with its own references.

    `with_reference`: also score the workload's cached exact retrain with the served version's seed,
    reported beside the others (the gate judges with its own references).
    """
    from workers.unlearning.evaluation import scenario
    from workers.workloads import cache_dir, load_workload

    if candidate_seed is not None:
        check_candidate_seed(candidate_seed)
    workload = load_workload(workload_name, size)
    if layout is not None:
        workload = workload.sharded(*layout)
    served, record = workload.trained()
    case = scenario(workload, forget_subjects, seed, subjects=subjects)
    started = time.perf_counter()
    reference = workload.retrained(case.subjects) if with_reference else None
    reference_seconds = time.perf_counter() - started
    if candidate is None:
        run_seed = seed if candidate_seed is None else candidate_seed
        candidate = calibration_candidate(method, served, record, case, run_seed, candidate_seed, config)
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
        lineage=workload.trained_dir().name,
        progress=progress,
    )
    return CaseResult(
        workload_name, method, case.subjects, report, candidate.seconds, reference_seconds, candidate_seed
    )


def calibration_candidate(
    method: str,
    served: Any,
    record: Any,
    case: Any,
    seed: int,
    candidate_seed: int | None,
    config: Mapping[str, Any] | None = None,
) -> UnlearningResult:
    """The candidate `method` makes on `case`: the untouched model, the weak ascent, an exact retrain from a
    fresh seed (`retrain` with `candidate_seed`), or a registered method run with `seed`."""
    if method == UNTOUCHED:
        return untouched(served)
    if method == WEAK_ASCENT:
        return weak_ascent(served, case.forget, record.recipe.lr, seed)
    if method == "retrain" and candidate_seed is not None:
        started = time.perf_counter()
        adapter = record.train_like(case.retain, seed=candidate_seed)
        adapter.model.eval()
        details = {"candidate_seed": candidate_seed, "trained_samples": len(case.retain)}
        return UnlearningResult(adapter, "retrain", True, time.perf_counter() - started, details=details)
    context = UnlearningContext(training=record, seed=seed)
    return get_method(method, **dict(config or {})).unlearn(
        served, case.forget, case.retain, case.validation, context
    )


def untouched(served: Any) -> UnlearningResult:
    """The served version as its own "candidate": what forgetting nothing looks like."""
    return UnlearningResult(adapter=served, method=UNTOUCHED, exact=False, seconds=0.0)


def weak_ascent(served: Any, forget: Sequence[Any], lr: float, seed: int, steps: int = 1) -> UnlearningResult:
    """Gradient ascent on the forget set's mean loss with Adam at the training learning rate, stopped after
    `steps` steps: a method that moves the right way but far too little, which the gate must refuse."""
    import torch

    from workers.modeling.base import seed_everything

    started = time.perf_counter()
    seed_everything(seed)
    model = served.clone()
    model.model.train()
    optimizer = torch.optim.Adam([p for p in model.model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        (-model.loss(model.collate(list(forget)))).backward()
        optimizer.step()
    model.model.eval()
    return UnlearningResult(
        adapter=model, method=WEAK_ASCENT, exact=False, seconds=time.perf_counter() - started
    )
