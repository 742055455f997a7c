"""`lethe verify`: unlearn subjects of a reference workload, run the gate, write the report and plots.

    lethe verify --workload bios --method nabla_tau --forget-subjects 5 [--size small|full] [--out DIR]
                 [--seed N] [--config '{"lr": 1e-4}'] [--candidate-seed N] [--policy '{"trust_exact": false}']

`--method none` verifies the untouched served model, `--method finetune` a short fine-tune on the retain
set and `--method ascent_one_step` gradient ascent stopped after one step: the gate must refuse all three.
`--candidate-seed N` makes the candidate with seed N, independent of every seed of the gate's references
(`--method retrain`: an exact retrain from a fresh initialisation and data order); `--policy` overrides the
gate's policy (workers.verification.gate.Policy), e.g. `{"trust_exact": false}` to judge an exact retrain by
every rule, as an approximate candidate is judged.

Prints the verdict, its one-sentence summary, the rules that decided it and key metrics, writes report.json
and the PNG plots into --out, and exits 0 on pass, 1 on fail, 2 on inconclusive, 64 on a bad --policy or a
reserved --candidate-seed. torch is imported only inside the handler.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2, "usage": 64}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify", help="unlearn on a reference workload and run the promotion gate"
    )
    parser.add_argument("--workload", required=True, choices=("digits", "bios", "minilm"))
    parser.add_argument("--method", required=True, help="registered method, 'none' (untouched) or 'finetune'")
    parser.add_argument("--forget-subjects", type=int, default=1, metavar="N", help="subjects to forget")
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--out", type=Path, help="report directory (default ./verify-<workload>-<method>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the unlearning run")
    parser.add_argument("--config", type=json.loads, default={}, help="method config overrides (JSON object)")
    parser.add_argument(
        "--candidate-seed", type=int, help="seed the candidate is made with (independent of the gate's)"
    )
    parser.add_argument("--policy", type=json.loads, default={}, help="gate policy overrides (JSON object)")
    parser.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from workers.unlearning.cli import progress_bar
    from workers.verification.gate import Policy
    from workers.verification.references import check_candidate_seed
    from workers.verification.workload_case import run_case

    out = args.out or Path(f"verify-{args.workload}-{args.method}")
    try:
        policy = Policy.from_dict(args.policy)
        if args.candidate_seed is not None:
            check_candidate_seed(args.candidate_seed)
    except (TypeError, ValueError) as exc:
        print(f"lethe verify: {exc}", file=sys.stderr)
        return EXIT_CODES["usage"]
    with progress_bar(f"{args.method} on {args.workload}, then verification") as progress:
        case = run_case(
            args.workload,
            args.method,
            args.forget_subjects,
            args.size,
            out_dir=out,
            policy=policy,
            seed=args.seed,
            config=args.config,
            candidate_seed=args.candidate_seed,
            progress=progress,
        )
    summary = case.summary()
    print(json.dumps(summary))
    print(format_summary(summary, case.report.directory))
    return EXIT_CODES[summary["verdict"]]


def format_summary(summary: dict[str, Any], directory: Path | None) -> str:
    verdict = summary["verdict"].upper() + (f" ({summary['label']})" if summary["label"] else "")
    seed = (
        f", candidate seed {summary['candidate_seed']}" if summary.get("candidate_seed") is not None else ""
    )
    lines = [
        f"verdict: {verdict}  [{summary['workload']}, {summary['method']}{seed}, "
        f"{summary['forget_subjects']} subjects forgotten]",
        summary["summary"],
        "decided by: " + ", ".join(summary["deciding_rules"]),
    ]
    lines += [f"  {name:42s} {value}" for name, value in summary["metrics"].items()]
    lines.append(
        f"time: unlearning {summary['unlearning_seconds']:.1f}s, verification "
        f"{summary['verification_seconds']:.1f}s, reference training "
        f"{summary['reference_training_seconds']:.1f}s "
        f"(built once in {summary['reference_training_seconds_when_built']}s)"
    )
    if directory is not None:
        lines.append(f"report: {directory / 'report.json'}")
    return "\n".join(lines)
