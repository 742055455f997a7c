"""`lethe verify`: unlearn subjects of a reference workload, run the gate, write the report and plots.

    lethe verify --workload bios --method nabla_tau --forget-subjects 5 [--size small|full] [--out DIR]
                 [--seed N] [--config '{"lr": 1e-4}']

`--method none` verifies the untouched served model and `--method finetune` a short fine-tune on the retain
set: the gate must refuse both. Prints the verdict, the rules that decided it and key metrics, writes
report.json and the PNG plots into --out, and exits 0 on pass, 1 on fail, 2 on inconclusive. The
workers' modules are imported inside the handler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from app.commands import command_app
from workers.unlearning.cli import ForgetSubjects, MethodConfig, Seed, Size, Workload, progress_bar

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2}

cli = command_app()


@cli.command("verify")
def run_verify(
    workload: Workload,
    method: Annotated[str, typer.Option(help="registered method, 'none' (untouched) or 'finetune'")],
    forget_subjects: ForgetSubjects = 1,
    size: Size = "small",
    out: Annotated[
        Path | None, typer.Option(help="report directory (default ./verify-<workload>-<method>)")
    ] = None,
    seed: Seed = 0,
    config: MethodConfig = None,
) -> int:
    """Unlearn subjects of a reference workload, run the promotion gate, write the report and plots.

    `--method none` verifies the untouched served model and `--method finetune` a short fine-tune on the
    retain set: the gate must refuse both. Exit 0 on pass, 1 on fail, 2 on inconclusive.
    """
    from workers.verification.workload_case import run_case

    directory = out or Path(f"verify-{workload}-{method}")
    with progress_bar(f"{method} on {workload}, then verification") as progress:
        case = run_case(
            workload,
            method,
            forget_subjects,
            size,
            out_dir=directory,
            seed=seed,
            config=config or {},
            progress=progress,
        )
    summary = case.summary()
    print(json.dumps(summary))
    print(format_summary(summary, case.report.directory))
    return EXIT_CODES[summary["verdict"]]


def format_summary(summary: dict[str, Any], directory: Path | None) -> str:
    verdict = summary["verdict"].upper() + (f" ({summary['label']})" if summary["label"] else "")
    lines = [
        f"verdict: {verdict}  [{summary['workload']}, {summary['method']}, "
        f"{summary['forget_subjects']} subjects forgotten]",
        "decided by: " + ", ".join(summary["deciding_rules"]),
    ]
    lines += [f"  {name:42s} {value}" for name, value in summary["metrics"].items()]
    lines.append(
        f"time: unlearning {summary['unlearning_seconds']:.1f}s, verification "
        f"{summary['verification_seconds']:.1f}s, LiRA reference training "
        f"{summary['reference_training_seconds']:.1f}s "
        f"(built once in {summary['reference_training_seconds_when_built']}s)"
    )
    if directory is not None:
        lines.append(f"report: {directory / 'report.json'}")
    return "\n".join(lines)
