"""One unlearning method in a process of its own, as a worker runs it: timings, verification and peak memory.

    python -m bench.memory --workload digits --method nabla_tau [--size small] [--subjects 1] [--repeats 3]
                           [--forget writer-0003,writer-0017]

The parent (`run_worker`) starts this module as a child process and reads the child's peak resident set
size from the kernel when it ends (os.wait4 -> ru_maxrss of that child alone), so each method's peak is
its own and not the harness's. The child also notes its peak after loading the workload and model and
after unlearning (getrusage of itself), which separates the method's share from the model's and from the
verification that follows. The measuring code is bench.unlearning's (`run_method`, `deepobliviate_sweep`)
and the verification case that bench/verification.py runs (workers.verification.workload_case); this
module only arranges the process around them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.registry.workload_sizes import WORKLOAD_SIZES

ROOT = Path(__file__).resolve().parent.parent
WARMUP_BELOW_SECONDS = 5.0


def rss_mb(kilobytes: int) -> float:
    """ru_maxrss is in kilobytes on Linux."""
    return round(kilobytes / 1024, 1)


def self_peak_mb() -> float:
    return rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# -- parent side -----------------------------------------------------------------------------------


def run_worker(options: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run the child with `options` (the CLI flags below); answer its report plus its peak RSS."""
    with tempfile.TemporaryDirectory(prefix="lethe-bench-") as tmp:
        out = Path(tmp) / "result.json"
        log = Path(tmp) / "stderr.log"
        command = [sys.executable, "-m", "bench.memory", "--out", str(out)]
        for key, value in options.items():
            if value is None or value is False:
                continue
            command.append("--" + key.replace("_", "-"))
            if value is not True:
                command.append(str(value))
        started = time.perf_counter()
        with open(log, "wb") as stderr:
            child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
            timer = threading.Timer(timeout, child.kill)  # a hung method must not hang the whole run
            timer.start()
            try:
                _, status, usage = os.wait4(child.pid, 0)
            finally:
                timer.cancel()
            child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if child.returncode != 0 or not out.is_file():
            tail = log.read_text(errors="replace").strip().splitlines()[-12:]
            reason = "timed out" if child.returncode == -9 else f"exit {child.returncode}"
            return {**_identity(options), "error": f"{reason}: " + " | ".join(tail)[-1500:]}
        report = json.loads(out.read_text())
    report["memory"]["peak_rss_mb"] = rss_mb(usage.ru_maxrss)
    report["process_seconds"] = round(seconds, 2)
    return report


def _identity(options: dict[str, Any]) -> dict[str, Any]:
    return {"method": options.get("method"), "workload": options.get("workload")}


# -- child side ------------------------------------------------------------------------------------


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    from workers.unlearning.evaluation import scenario, utility
    from workers.verification.workload_case import UNTOUCHED
    from workers.workloads import load_workload

    memory = {"imports_mb": self_peak_mb()}
    workload = load_workload(args.workload, args.size, args.seed)
    served, record = workload.trained()
    case = scenario(workload, args.subjects, args.seed, subjects=forget_list(args.forget))
    served_metrics = utility(served, case.evaluation_sets(args.seed))  # also warms up before any timing
    memory["loaded_mb"] = self_peak_mb()

    runs, result = timed_runs(args, served, record, case)
    memory["after_unlearning_mb"] = self_peak_mb()
    report: dict[str, Any] = {
        "workload": args.workload,
        "method": args.method,
        "n_subjects": len(case.subjects),
        "forget_subjects": case.subjects,
        "n_forget": len(case.forget),
        "memory": memory,
        "served_metrics": served_metrics,
        **runs,
    }
    if args.method == UNTOUCHED:
        report["metrics"] = served_metrics
    if args.sweep and "unavailable" not in runs:
        from bench.unlearning import deepobliviate_sweep

        report["sweep"] = deepobliviate_sweep(served, record, workload, case, args.seed)
    if args.verify and "unavailable" not in runs:
        report["verification"] = verification(
            args.workload, args.method, case.subjects, args.size, args.seed, result
        )
    memory["peak_self_mb"] = self_peak_mb()
    return report


def forget_list(text: str | None) -> list[str] | None:
    return [s for s in text.split(",") if s] if text else None


def timed_runs(args: argparse.Namespace, served: Any, record: Any, case: Any) -> tuple[dict[str, Any], Any]:
    from workers.verification.workload_case import UNTOUCHED, untouched

    if args.method == UNTOUCHED:  # the served version itself: what the gate must refuse
        return {"exact": False, "seconds": []}, untouched(served)
    row, result = timed(
        args.method, served, record, case, args.seed, args.repeats, args.repeat_budget, keep=args.verify
    )
    return {k: v for k, v in row.items() if k != "method"}, result


def timed(
    method: str, served: Any, record: Any, case: Any, seed: int, repeats: int, budget: float, keep: bool
) -> tuple[dict[str, Any], Any]:
    """bench.unlearning.run_method repeated: up to `repeats` timed runs while they stay within `budget` s.

    A first run shorter than WARMUP_BELOW_SECONDS is a warm-up (lazy imports, first backward pass and
    optimizer kernels of a fresh process), kept apart as `first_run_seconds`: a worker that has served one
    job no longer pays it, and for so short a run it would dominate. The first run's numbers are kept.
    """
    from bench.unlearning import run_method

    keeps_result = keep and "keep_result" in inspect.signature(run_method).parameters
    seconds: list[float] = []
    first: dict[str, Any] | None = None
    warmup: float | None = None
    started = time.perf_counter()
    while len(seconds) < repeats:
        extra = {"keep_result": True} if keeps_result and first is None else {}
        row = run_method(method, served, record, case, seed, **extra)
        if "unavailable" in row:
            return row, None
        if first is None and warmup is None and row["seconds"] < WARMUP_BELOW_SECONDS:
            warmup = row["seconds"]
        else:
            seconds.append(row["seconds"])
        first = first or row
        if seconds and time.perf_counter() - started > budget:
            break
    result = first.pop("result", None)
    out = {**first, "seconds": seconds}
    if warmup is not None:
        out["first_run_seconds"] = warmup
    return out, result


def verification(
    workload: str, method: str, subjects: Sequence[str], size: str, seed: int, result: Any
) -> dict[str, Any]:
    """The gate on `result` (bench.verification's case, against the cached exact-retrain reference).

    Without a candidate in hand (bench.unlearning's run_method keeps it only with keep_result) the case
    unlearns once more itself; `unlearning_seconds` then comes from that extra run.
    """
    from workers.verification.workload_case import run_case

    case = run_case(
        workload, method, len(subjects), size, seed=seed, candidate=result, subjects=list(subjects)
    )
    return {**verification_summary(case), "candidate": "timed run" if result is not None else "extra run"}


def verification_summary(case: Any) -> dict[str, Any]:
    """bench.verification's summary of a verified case, plus TPR at the gate's FPR beside the reference."""
    row = case.summary()
    report = case.report
    attack = report.results["mia"].values.get("primary_attack", "loss")
    tag = f"tpr_{report.policy.gate_fpr:g}"
    for role in ("candidate", "served", "reference"):
        for metric in ("forget_auc", tag):
            estimate = report.metric(f"{attack}.{metric}.{role}")
            if estimate is not None:
                row["metrics"][f"{attack}.{metric}.{role}"] = round(estimate.value, 4)
    row["primary_attack"] = attack
    row["gate_fpr"] = report.policy.gate_fpr
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--size", choices=WORKLOAD_SIZES, default="small")
    parser.add_argument("--subjects", type=int, default=1)
    parser.add_argument("--forget", help="comma-separated subject ids (default: the workload's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--repeat-budget", type=float, default=60.0, help="seconds after which repeats stop")
    parser.add_argument("--verify", action="store_true", help="run the gate on the first candidate")
    parser.add_argument("--sweep", action="store_true", help="deepobliviate: one subject from every block")
    parser.add_argument("--out", type=Path, help="write the report here (default: stdout)")
    args = parser.parse_args(argv)
    report = run_child(args)
    text = json.dumps(report, indent=1, default=float)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
