"""Verification benchmark: per workload and method, the gate's verdict, the rules that decided it, key
metrics, and the verification time beside the unlearning time (goal: verification <= 25 % of unlearning
once the gate's references are cached); the one-off reference training is reported apart. The gate's
operating characteristics (false rejection and acceptance rates) are bench.gate's.

    python -m bench.verification [--size small|medium|full] [--workloads digits,bios,minilm] [--methods ...]
                                 [--forget-subjects N] [--out results.json]

Per workload the untouched model ("none") runs first: it builds (or loads) the gate's references, once per
lineage, and scores the served version once, as the first deletion against a version does; every later row
runs with both cached. The exact-retrain reference is the workload's cached retrain (not timed); the
`retrain` row times the registry's method. The markdown table goes to stdout, with --out also the raw
numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from app.registry.workload_sizes import WORKLOAD_SIZES

DEFAULT_METHODS = (
    "none",
    "finetune",
    "retrain",
    "deepobliviate",
    "nabla_tau",
    "first_epoch_ascent",
    "lora_residual_alignment",
)


def run_workload(workload: str, methods: list[str], size: str, forget_subjects: int | None) -> list[dict]:
    from workers.unlearning.base import MethodUnavailable
    from workers.verification.workload_case import DEFAULT_FORGET_SUBJECTS, run_case
    from workers.workloads import load_workload

    load_workload(workload, size).trained()  # trained on first use, not timed
    n = forget_subjects or DEFAULT_FORGET_SUBJECTS[workload]
    rows = []
    for method in methods:
        print(f"[{workload}] {method} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            case = run_case(workload, method, n, size)
        except MethodUnavailable as exc:
            rows.append({"workload": workload, "method": method, "unavailable": str(exc)})
            continue
        row = case.summary()
        row["wall_seconds"] = round(time.perf_counter() - started, 2)
        row["checks_seconds"] = case.report.timings["checks_seconds"]
        rows.append(row)
    return rows


def _metric(row: dict, *names: str) -> str:
    for name in names:
        for key, value in row["metrics"].items():
            if key.endswith(name):
                return f"{value:.3f}"
    return "-"


def markdown(rows: list[dict]) -> str:
    header = (
        "| workload | method | verdict | decided by | forget AUC cand / served / ref "
        "| canary bits or trigger rate | unlearning s | verification s | verif / unlearn |"
    )
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        if "unavailable" in row:
            lines.append(f"| {row['workload']} | {row['method']} | unavailable | - | - | - | - | - | - |")
            continue
        attack = next((k.split(".")[0] for k in row["metrics"] if ".forget_auc." in k), "")
        aucs = " / ".join(_metric(row, f"forget_auc.{role}") for role in ("candidate", "served", "reference"))
        planted = _metric(row, "exposure_deleted_bits.candidate", "success_rate.candidate")
        verdict = row["verdict"] + (" (exact)" if row["label"] else "")
        rules = ", ".join(sorted(set(row["deciding_rules"])))[:70]
        unlearn, verif = row["unlearning_seconds"], row["verification_seconds"]
        ratio = f"{100 * verif / unlearn:.0f} %" if unlearn > 0 else "-"
        lines.append(
            f"| {row['workload']} | {row['method']} | {verdict} | {rules} | {attack} {aucs} | {planted} "
            f"| {unlearn:.1f} | {verif:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def references_table(rows: list[dict]) -> str:
    lines = ["| workload | reference training (s, once per lineage) |", "|---|---|"]
    seen = set()
    for row in rows:
        if row.get("reference_training_seconds_when_built") is not None and row["workload"] not in seen:
            seen.add(row["workload"])
            lines.append(f"| {row['workload']} | {row['reference_training_seconds_when_built']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=WORKLOAD_SIZES, default="small")
    parser.add_argument("--workloads", default="digits,bios,minilm")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--forget-subjects", type=int, help="default: per workload, as in the tests")
    parser.add_argument("--out", type=Path, help="also write the raw numbers as JSON")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for workload in args.workloads.split(","):
        rows += run_workload(workload, args.methods.split(","), args.size, args.forget_subjects)
    table = markdown(rows) + "\n\n" + references_table(rows)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"size": args.size, "rows": rows, "markdown": table}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
