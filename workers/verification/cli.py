"""`lethe verify`: unlearn subjects of a reference workload, run the gate, write the report and plots.

    lethe verify --workload bios --method nabla_tau --forget-subjects 5 [--size small|full] [--out DIR]
                 [--seed N] [--config '{"lr": 1e-4}'] [--candidate-seed N] [--policy '{"trust_exact": false}']

`--method none` verifies the untouched served model, `--method finetune` a short fine-tune on the retain
set and `--method ascent_one_step` gradient ascent stopped after one step: the gate must refuse all three.
`--candidate-seed N` makes the candidate with seed N, independent of every seed of the gate's references
(`--method retrain`: an exact retrain from a fresh initialisation and data order); `--policy` overrides the
gate's policy (GatePolicy, app/registry/policy.py), e.g. `{"trust_exact": false}` to judge an exact retrain
by every rule, as an approximate candidate is judged.

Prints the verdict, its one-sentence summary, the rules that decided it and key metrics, writes report.json
and the PNG plots into --out, and exits 0 on pass, 1 on fail, 2 on inconclusive, 64 on a bad --policy or a
reserved --candidate-seed. The workers' modules are imported inside the handler.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from app.commands import command_app
from workers.unlearning.cli import (
    ForgetSubjects,
    MethodConfig,
    Seed,
    Size,
    Workload,
    json_object,
    progress_bar,
)

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2, "usage": 64}

PolicyOverrides = Annotated[
    dict[str, Any] | None,
    typer.Option(parser=json_object, metavar="JSON", help="gate policy overrides (JSON object)"),
]

cli = command_app()


@cli.command("verify")
def run_verify(
    workload: Workload,
    method: Annotated[
        str, typer.Option(help="registered method, 'none' (untouched), 'finetune' or 'ascent_one_step'")
    ],
    forget_subjects: ForgetSubjects = 1,
    size: Size = "small",
    out: Annotated[
        Path | None, typer.Option(help="report directory (default ./verify-<workload>-<method>)")
    ] = None,
    seed: Seed = 0,
    config: MethodConfig = None,
    candidate_seed: Annotated[
        int | None, typer.Option(help="seed the candidate is made with (independent of the gate's)")
    ] = None,
    policy: PolicyOverrides = None,
) -> int:
    """Unlearn subjects of a reference workload, run the promotion gate, write the report and plots.

    `--method none` verifies the untouched served model, `--method finetune` a short fine-tune on the retain
    set, `--method ascent_one_step` one step of gradient ascent: the gate must refuse all three.
    `--candidate-seed N` makes the candidate with seed N (`--method retrain`: an exact retrain from a fresh
    seed); `--policy` overrides the gate's settings. Exit 0 on pass, 1 on fail, 2 on inconclusive, 64 on a
    bad --policy or a reserved --candidate-seed.
    """
    from app.registry.overrides import apply_overrides
    from app.registry.policy import GateOverrides as Overrides
    from workers.verification.gate import Policy
    from workers.verification.references import check_candidate_seed
    from workers.verification.workload_case import run_case

    directory = out or Path(f"verify-{workload}-{method}")
    try:
        gate_policy = apply_overrides(Policy, Overrides.model_validate(policy or {}))
        if candidate_seed is not None:
            check_candidate_seed(candidate_seed)
    except (TypeError, ValueError) as exc:
        print(f"lethe verify: {exc}", file=sys.stderr)
        return EXIT_CODES["usage"]
    with progress_bar(f"{method} on {workload}, then verification") as progress:
        case = run_case(
            workload,
            method,
            forget_subjects,
            size,
            out_dir=directory,
            policy=gate_policy,
            seed=seed,
            config=config or {},
            candidate_seed=candidate_seed,
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
