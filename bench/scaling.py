"""Scaling: time and forget quality against the size of the forget set.

Per workload, forget sets of the configured sizes (1, 10, 100 subjects, and 5 and 20 on the language
workloads for the gate goal) while their samples stay within 30 % of the training set, and nabla_tau also
at that 30 % (the fraction its paper claims). `retrain` runs at every size: it is the denominator of the
speedups and the target of the forget quality. Forget quality is read two ways: the gate's verdict with
the primary attack's forget AUC beside the exact-retrain reference's (bench.verification's case), and,
without any attack, how far the forget-set loss moved from the served model's towards the retrained
model's (1 = where retraining lands, 0 = nothing forgotten, above 1 = pushed past it).

Size 1 is the methods section's run (same scenario and seed) and is not repeated here.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from bench.report import ratio_spread, spread
from bench.unlearning import forget_gap_closed

MAX_FORGET_FRACTION = 0.3
GATE_GOAL_WORKLOADS = ("bios", "minilm")


def cap_subjects(workload: Any, fraction: float, seed: int) -> int:
    """The most subjects (in the workload's forget order) whose samples stay within `fraction` of training."""
    counts = Counter(sample.subject for sample in workload.train)
    limit, total, n = fraction * len(workload.train), 0, 0
    for subject in workload.forget_subjects(len(workload.subjects), seed):
        total += counts[subject]
        if total > limit:
            break
        n += 1
    return max(n, 1)


def add_verification_costs(row: dict[str, Any], retrain_seconds: dict[str, Any]) -> None:
    """Verification time against the method's median time, and the speedup once verification is paid."""
    verification, seconds = row.get("verification") or {}, row.get("seconds") or {}
    if "verification_seconds" not in verification or not seconds.get("n"):
        return
    verification["share_of_unlearning"] = verification["verification_seconds"] / max(seconds["median"], 1e-9)
    if retrain_seconds.get("n"):
        row["speedup_with_verification"] = retrain_seconds["median"] / (
            seconds["median"] + verification["verification_seconds"]
        )


def run(
    workloads: Sequence[str],
    methods: Sequence[str],
    size: str,
    sizes: Sequence[int],
    repeats: int,
    budget: float,
    verify: bool,
    seed: int = 0,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    from bench.memory import timed, verification
    from workers.unlearning.evaluation import scenario, utility
    from workers.workloads import load_workload

    out: dict[str, Any] = {"workloads": [], "max_forget_fraction": MAX_FORGET_FRACTION}
    for name in workloads:
        workload = load_workload(name, size, seed)
        served, record = workload.trained()
        extra = (5, 20) if name in GATE_GOAL_WORKLOADS else ()
        cap = cap_subjects(workload, MAX_FORGET_FRACTION, seed)
        grid = sorted({n for n in (*sizes, *extra) if 1 < n <= cap})
        plan = [(n, list(methods)) for n in grid]
        if "nabla_tau" in methods and cap not in grid and cap > 1:
            plan.append((cap, ["nabla_tau"]))
        entry: dict[str, Any] = {
            "workload": name,
            "size": size,
            "training_subjects": len(workload.subjects),
            "cap_subjects": cap,
            "points": [],
        }
        for n, chosen in plan:
            case = scenario(workload, n, seed)
            served_metrics = utility(served, case.evaluation_sets(seed))
            log(f"[scaling {name} n={n}] retrain ...")
            retrain, _ = timed("retrain", served, record, case, seed, repeats, budget, keep=False)
            retrain["seconds"] = spread(retrain["seconds"])
            entry["points"].append(_point(name, n, case, retrain, retrain, served_metrics, None))
            for method in chosen:
                log(f"[scaling {name} n={n}] {method} ...")
                row, result = timed(method, served, record, case, seed, repeats, budget, keep=verify)
                if "seconds" in row:
                    row["seconds"] = spread(row["seconds"])
                checked = None
                if verify and "unavailable" not in row:
                    checked = verification(name, method, case.subjects, size, seed, result)
                entry["points"].append(_point(name, n, case, row, retrain, served_metrics, checked))
        out["workloads"].append(entry)
    return out


def _point(
    workload: str,
    n: int,
    case: Any,
    row: dict[str, Any],
    retrain: dict[str, Any],
    served_metrics: dict[str, Any],
    verification: dict[str, Any] | None,
) -> dict[str, Any]:
    point: dict[str, Any] = {
        "workload": workload,
        "method": row["method"],
        "n_subjects": n,
        "n_forget": len(case.forget),
        "forget_fraction": len(case.forget) / max(len(case.forget) + len(case.retain), 1),
    }
    if "unavailable" in row:
        return {**point, "unavailable": row["unavailable"]}
    point.update(seconds=row["seconds"], exact=row.get("exact"), metrics=row["metrics"])
    if row["method"] != "retrain":
        point["speedup"] = ratio_spread(retrain["seconds"], row["seconds"])
    point["forget_gap_closed"] = forget_gap_closed(row["metrics"], served_metrics, retrain["metrics"])
    if verification is not None:
        point["verification"] = verification
        add_verification_costs(point, retrain["seconds"])
    return point
