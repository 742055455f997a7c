"""`lethe verify`: unlearn subjects of a reference workload, or of a registered model, run the gate, write
the report and plots.

    lethe verify --workload bios --method nabla_tau --forget-subjects 5 [--size small|full] [--out DIR]
                 [--seed N] [--config '{"lr": 1e-4}']
    lethe verify --model NAME --tenant TENANT --subject ID [--subject ID ...] --method finetune
                 [--version N] [--out DIR] [--seed N] [--config JSON]

With --model it is a dry run of the pipeline's unlearn and verify stages (workers.pipeline.dry_run): the
report goes to --out, nothing is stored or promoted.

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
from workers.unlearning.cli import (
    DRY_RUN_NOTE,
    ForgetSubjects,
    MethodConfig,
    RegisteredModel,
    Seed,
    Size,
    Subjects,
    Tenant,
    Version,
    Workload,
    check_target,
    progress_bar,
    refusals,
)

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2}

cli = command_app()


@cli.command("verify")
def run_verify(
    method: Annotated[str, typer.Option(help="registered method, 'none' (untouched) or 'finetune'")],
    workload: Workload = None,
    forget_subjects: ForgetSubjects = 1,
    size: Size = "small",
    model: RegisteredModel = None,
    tenant: Tenant = None,
    subjects: Subjects = None,
    version: Version = None,
    out: Annotated[
        Path | None, typer.Option(help="report directory (default ./verify-<workload or model>-<method>)")
    ] = None,
    seed: Seed = 0,
    config: MethodConfig = None,
) -> int:
    """Unlearn subjects of a reference workload or a registered model, run the gate, write the report.

    `--method none` verifies the untouched served model and `--method finetune` a short fine-tune on the
    retain set: the gate must refuse both. With --model, a dry run of the pipeline on the database: the
    report goes to --out, nothing is stored or promoted. Exit 0 on pass, 1 on fail, 2 on inconclusive.
    """
    from workers.verification.workload_case import UNTOUCHED, CaseResult, run_case, untouched

    check_target(workload, model, tenant, subjects)
    directory = out or Path(f"verify-{workload or model}-{method}")
    if model is not None:
        from workers.pipeline.dry_run import open_deletion

        methods = [] if method == UNTOUCHED else [method]
        with refusals():
            deletion = open_deletion(tenant or "", model, subjects or [], methods, version)
        with progress_bar(f"{method} on {model} v{deletion.version}, then verification") as progress:
            candidate = (
                untouched(deletion.served)
                if method == UNTOUCHED
                else deletion.unlearn(method, config, seed, lambda f, m: progress(f / 2, m))
            )
            report = deletion.verify(candidate, directory, lambda f, m: progress(0.5 + f / 2, m))
        case = CaseResult(model, method, subjects or [], report, candidate.seconds, 0.0)
        summary = {**case.summary(), **deletion.describe()}
        del summary["workload"]
        print(json.dumps(summary))
        print(format_summary(summary, report.directory))
        print(DRY_RUN_NOTE)
        return EXIT_CODES[summary["verdict"]]
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
    target = summary.get("workload") or f"{summary['model']} v{summary['version']}"
    lines = [
        f"verdict: {verdict}  [{target}, {summary['method']}, "
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
