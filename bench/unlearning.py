"""Unlearning benchmark: per workload and method, wall time, speedup over `retrain` measured in the same run,
and loss with accuracy (classifiers) or perplexity (language models) on the forget, retain and held-out data.

    python -m bench.unlearning [--size small|medium|full] [--forget-subjects 1]
                               [--workloads digits,bios,minilm] [--methods ...]
                               --out docs/benchmarks/unlearning.json

Each workload's model comes from its disk cache (trained on first use, not timed). The forget set is the
workload's choice of subjects (signal carriers first). Every method runs with its defaults on the same
split and seed in one process, after a warm-up pass, and `retrain` (exact retraining on the retain set
with the original recipe) gives the denominator of the speedups. DeepObliviate's cost depends on which
block holds the forgotten subject, so for it the run also sweeps one subject from every block and reports
the speedup averaged over all training subjects (each subject weighted once).

The markdown table goes to stdout and, with the raw numbers, into the JSON file given by --out.

`python -m bench --sections methods` runs the same measurements in worker processes of their own, on
subjects from `pick_forget_subjects`: signal carriers whose signal the served model actually carries.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.registry.workload_sizes import WORKLOAD_SIZES
from bench.methods import COMPARED, REFERENCE

DEFAULT_METHODS = COMPARED


def forget_gap_closed(
    metrics: dict[str, Any], served: dict[str, Any], retrain: dict[str, Any]
) -> float | None:
    """(forget loss - served's) / (retrain's - served's): 0 = untouched, 1 = as retrained."""
    gap = retrain["forget"]["loss"] - served["forget"]["loss"]
    if abs(gap) < 1e-6:
        return None  # retraining did not move the forget loss: nothing to measure progress against
    return (metrics["forget"]["loss"] - served["forget"]["loss"]) / gap


# -- which subjects the benchmark forgets --------------------------------------------------------------


def untouched_verdict(workload: str, size: str, subject: str, seed: int) -> dict[str, Any]:
    """The calibrated gate on the untouched served model for a deletion of `subject` alone, and the
    forgetting rules it fails with power (the served model fails them, so they tell forgetting apart)."""
    from workers.verification.workload_case import UNTOUCHED, run_case

    case = run_case(workload, UNTOUCHED, 1, size, seed=seed, subjects=[subject], with_reference=False)
    verdict = case.report.verdict
    return {
        "subject": subject,
        "verdict": verdict.verdict,
        "powered_failures": [rule.rule for rule in verdict.rules if rule.powered and rule.status == "fail"],
    }


def pick_forget_subjects(
    workload: str,
    size: str,
    needed: int,
    seed: int,
    judge: Callable[[str, str, str, int], dict[str, Any]] = untouched_verdict,
) -> dict[str, Any]:
    """`needed` signal carriers whose signal the served model carries, in the workload's order for `seed`.

    A carrier qualifies when the gate fails the untouched model for it on a powered rule: an inconclusive
    or passing verdict means no check could tell a method that forgot it from one that did nothing, so its
    deletion would measure nothing. The others are skipped and listed with their verdicts.
    """
    from workers.workloads import load_workload

    loaded = load_workload(workload, size)
    carriers = loaded.forget_subjects(len(loaded.signal_subjects), seed)  # signal carriers, seeded order
    chosen: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for subject in carriers:
        if len(chosen) == needed:
            break
        judged = judge(workload, size, subject, seed)
        (chosen if judged["powered_failures"] else skipped).append(judged)
    return {
        "carriers": len(carriers),
        "needed": needed,
        "tried": len(chosen) + len(skipped),
        "chosen": [j["subject"] for j in chosen],
        "qualified": chosen,
        "skipped": skipped,
    }


# -- one method on one deletion -------------------------------------------------------------------------


def run_method(name: str, served: Any, record: Any, case: Any, seed: int, config: dict | None = None) -> dict:
    from workers.unlearning import MethodUnavailable, UnlearningContext, get_method
    from workers.unlearning.evaluation import utility

    method = get_method(name, **(config or {}))
    context = UnlearningContext(training=record, seed=seed)
    try:
        result = method.unlearn(served, case.forget, case.retain, case.validation, context)
    except MethodUnavailable as exc:
        return {"method": name, "unavailable": str(exc)}
    details = {k: v for k, v in result.details.items() if isinstance(v, int | float | str | bool)}
    return {
        "method": name,
        "seconds": result.seconds,
        "exact": result.exact,
        "metrics": utility(result.adapter, case.evaluation_sets(seed)),
        "details": details,
    }


def deepobliviate_sweep(served: Any, record: Any, workload: Any, case: Any, seed: int) -> dict:
    """Exact restart for one subject from each block, beside a retrain timed in the same stretch.

    Reports the speedup for one subject averaged over all training subjects (mean of retrain / restart,
    each subject weighted once) and the throughput ratio (retrain / mean restart time), which is what a
    stream of single-subject deletions sees.
    """
    from workers.unlearning import UnlearningContext, get_method
    from workers.unlearning.evaluation import scenario

    retrain_seconds = run_method(REFERENCE, served, record, case, seed)["seconds"]
    per_block: list[dict[str, Any]] = []
    method = get_method("deepobliviate")
    for k, subjects in enumerate(record.block_subjects):
        if not subjects:
            continue
        one = scenario(workload, subjects=[subjects[0]], seed=seed)
        started = time.perf_counter()
        method.unlearn(served, one.forget, one.retain, one.validation, UnlearningContext(record, seed))
        per_block.append({"block": k, "subjects": len(subjects), "seconds": time.perf_counter() - started})
    total = sum(b["subjects"] for b in per_block)
    mean_speedup = sum(b["subjects"] * retrain_seconds / b["seconds"] for b in per_block) / total
    mean_seconds = sum(b["subjects"] * b["seconds"] for b in per_block) / total
    return {
        "retrain_seconds": retrain_seconds,
        "blocks": per_block,
        "mean_speedup_over_subjects": mean_speedup,
        "throughput_speedup": retrain_seconds / mean_seconds,
        "num_blocks": record.num_blocks,
    }


def bench_workload(name: str, size: str, n_subjects: int, methods: list[str], seed: int) -> dict:
    from workers.unlearning.evaluation import scenario, utility
    from workers.workloads import load_workload

    workload = load_workload(name, size)
    served, record = workload.trained()
    case = scenario(workload, n_subjects, seed)
    served_metrics = utility(served, case.evaluation_sets(seed))  # also warms up kernels before timing
    rows = [{"method": "served", "metrics": served_metrics}]
    retrain = run_method(REFERENCE, served, record, case, seed)
    rows.append(retrain)
    for method in methods:
        print(f"[{name}] {method} ...", file=sys.stderr, flush=True)
        rows.append(run_method(method, served, record, case, seed))
    for row in rows:
        if "seconds" in row and row["method"] != REFERENCE:
            row["speedup"] = retrain["seconds"] / max(row["seconds"], 1e-9)
        if "metrics" in row and row["method"] != "served":
            closed = forget_gap_closed(row["metrics"], served_metrics, retrain["metrics"])
            if closed is not None:
                row["forget_gap_closed"] = closed
    out = {
        "workload": name,
        "task": workload.task,
        "size": size,
        "forget_subjects": case.subjects,
        "n_forget": len(case.forget),
        "n_retain": len(case.retain),
        "rows": rows,
    }
    if "deepobliviate" in methods and record.has_checkpoints and name == "digits":
        out["deepobliviate_sweep"] = deepobliviate_sweep(served, record, workload, case, seed)
    return out


def markdown(results: list[dict]) -> str:
    lines = [
        "| workload | method | exact | wall time (s) | speedup vs retrain | forget gap closed "
        "| forget | retain | held-out |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        lm = result["task"] == "causal-lm"
        for row in result["rows"]:
            if "unavailable" in row:
                reason = f"unavailable: {row['unavailable']}"
                lines.append(f"| {result['workload']} | {row['method']} | | {reason} ||||||")
                continue
            cells = [_split_cell(row["metrics"][split], lm) for split in ("forget", "retain", "heldout")]
            seconds = f"{row['seconds']:.2f}" if "seconds" in row else "-"
            speedup = f"{row['speedup']:.1f}x" if "speedup" in row else "-"
            exact = {True: "yes", False: "no"}.get(row.get("exact"), "")
            closed = f"{row['forget_gap_closed']:.0%}" if "forget_gap_closed" in row else "-"
            head = f"| {result['workload']} | {row['method']} | {exact} | {seconds} | {speedup} | {closed} | "
            lines.append(head + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Cells: mean loss / accuracy (classifiers) or mean loss / perplexity (language models). Forget gap "
        "closed: (candidate - served) / (retrain - served) of the forget set's mean loss; 100 % forgets "
        "like retraining, above 100 % over-unlearns."
    )
    for result in results:
        sweep = result.get("deepobliviate_sweep")
        if sweep:
            mean, throughput = sweep["mean_speedup_over_subjects"], sweep["throughput_speedup"]
            lines.append(
                f"{result['workload']}: deepobliviate restart speedup for one subject, averaged over all "
                f"training subjects ({sweep['num_blocks']} subject-aligned blocks): {mean:.1f}x; "
                f"throughput ratio (retrain / mean restart time): {throughput:.1f}x."
            )
        lines.append(
            f"{result['workload']} ({result['size']}): forgot {len(result['forget_subjects'])} subject(s), "
            f"{result['n_forget']} samples, retain {result['n_retain']}."
        )
    return "\n".join(lines)


def _split_cell(numbers: dict[str, float], lm: bool) -> str:
    second = numbers["perplexity"] if lm else numbers["accuracy"]
    return f"{numbers['loss']:.3f} / {second:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=WORKLOAD_SIZES, default="small")
    parser.add_argument("--forget-subjects", type=int, default=1)
    parser.add_argument("--workloads", default="digits,bios,minilm")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/unlearning.json"))
    args = parser.parse_args(argv)
    import torch

    started = time.perf_counter()
    results = [
        bench_workload(name, args.size, args.forget_subjects, args.methods.split(","), args.seed)
        for name in args.workloads.split(",")
    ]
    table = markdown(results)
    machine = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python -m bench.unlearning " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "seconds": time.perf_counter() - started,
        "results": results,
        "markdown": table,
    }
    args.out.write_text(json.dumps(report, indent=1, default=float))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
