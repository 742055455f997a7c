"""`lethe verify`: unlearn subjects of a reference workload, or of a registered model, run the gate, write
the report and plots.

    lethe verify --workload bios --method nabla_tau --forget-subjects 5 [--size small|medium|full] [--out DIR]
                 [--seed N] [--config '{"lr": 1e-4}'] [--candidate-seed N] [--policy '{"trust_exact": false}']
    lethe verify --model NAME --tenant TENANT --subject ID [--subject ID ...] --method finetune
                 [--version N] [--out DIR] [--seed N] [--config JSON] [--policy JSON]

`--method none` verifies the untouched served model, `--method finetune` a short fine-tune on the retain
set and `--method ascent_one_step` gradient ascent stopped after one step: the gate must refuse all three.
`--candidate-seed N` makes the candidate with seed N, independent of every seed of the gate's references
(`--method retrain`: an exact retrain from a fresh initialisation and data order; workloads only); `--policy`
overrides the gate's policy (GatePolicy, app/registry/policy.py; with --model over the model's own), e.g.
`{"trust_exact": false}` to judge an exact retrain by every rule, as an approximate candidate is judged.

With --model it is a dry run of the pipeline's unlearn and verify stages (workers.pipeline.dry_run): the
report goes to --out, nothing is stored or promoted.

Prints the verdict, its one-sentence summary, the rules that decided it and key metrics, writes report.json
and the PNG plots into --out, and exits 0 on pass, 1 on fail, 2 on inconclusive, 64 on a bad --policy, a
reserved --candidate-seed or a deletion that cannot be tried. The workers' modules are imported inside the
handler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from app.commands import command_app
from workers.unlearning.cli import (
    DRY_RUN_NOTE,
    EXIT_USAGE,
    ForgetSubjects,
    Layout,
    MethodConfig,
    RegisteredModel,
    Seed,
    Size,
    Subjects,
    Tenant,
    Version,
    Workload,
    check_target,
    json_object,
    parse_layout,
    progress_bar,
    refusals,
    usage_error,
)

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2, "usage": EXIT_USAGE}

PolicyOverrides = Annotated[
    dict[str, Any] | None,
    typer.Option(parser=json_object, metavar="JSON", help="gate policy overrides (JSON object)"),
]

cli = command_app()


@cli.command("verify")
def run_verify(
    method: Annotated[
        str, typer.Option(help="registered method, 'none' (untouched), 'finetune' or 'ascent_one_step'")
    ],
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
    candidate_seed: Annotated[
        int | None, typer.Option(help="seed the candidate is made with (independent of the gate's)")
    ] = None,
    policy: PolicyOverrides = None,
    layout: Layout = None,
) -> int:
    """Unlearn subjects of a reference workload or a registered model, run the gate, write the report.

    `--method none` verifies the untouched served model, `--method finetune` a short fine-tune on the retain
    set, `--method ascent_one_step` one step of gradient ascent: the gate must refuse all three.
    `--candidate-seed N` makes the candidate with seed N (`--method retrain`: an exact retrain from a fresh
    seed); `--policy` overrides the gate's settings. With --model, a dry run of the pipeline on the
    database: the report goes to --out, nothing is stored or promoted. Exit 0 on pass, 1 on fail, 2 on
    inconclusive, 64 on a bad --policy, a reserved --candidate-seed or a deletion that cannot be tried.
    """
    from app.registry.overrides import apply_overrides
    from app.registry.policy import GateOverrides as Overrides
    from workers.verification.gate import Policy
    from workers.verification.references import check_candidate_seed
    from workers.verification.workload_case import UNTOUCHED, CaseResult, run_case, untouched

    check_target(workload, model, tenant, subjects)
    shards = parse_layout(layout, model)
    directory = out or Path(f"verify-{workload or model}-{method}")
    try:
        gate_policy = apply_overrides(Policy, Overrides.model_validate(policy or {}))
        if candidate_seed is not None:
            if model is not None:
                raise ValueError("--candidate-seed makes a workload's candidate; with --model use --seed")
            check_candidate_seed(candidate_seed)
    except (TypeError, ValueError) as exc:
        usage_error(str(exc))
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
            report = deletion.verify(
                candidate, directory, lambda f, m: progress(0.5 + f / 2, m), overrides=policy
            )
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
            policy=gate_policy,
            seed=seed,
            config=config or {},
            candidate_seed=candidate_seed,
            progress=progress,
            layout=shards,
        )
    summary = case.summary()
    print(json.dumps(summary))
    print(format_summary(summary, case.report.directory))
    return EXIT_CODES[summary["verdict"]]


def format_summary(summary: dict[str, Any], directory: Path | None) -> str:
    verdict = summary["verdict"].upper() + (f" ({summary['label']})" if summary["label"] else "")
    target = summary.get("workload") or f"{summary['model']} v{summary['version']}"
    seed = (
        f", candidate seed {summary['candidate_seed']}" if summary.get("candidate_seed") is not None else ""
    )
    lines = [
        f"verdict: {verdict}  [{target}, {summary['method']}{seed}, "
        f"{summary['forget_subjects']} subjects forgotten]",
        summary["summary"],
        "decided by: " + ", ".join(summary["deciding_rules"]),
    ]
    lines += [f"  {name:42s} {value}" for name, value in summary["metrics"].items()]
    built = summary.get("reference_training_seconds_when_built")
    lines.append(
        f"time: unlearning {summary['unlearning_seconds']:.1f}s, verification "
        f"{summary['verification_seconds']:.1f}s, reference training "
        f"{summary['reference_training_seconds']:.1f}s"
        + (f" (built once in {built}s)" if built is not None else "")
    )
    if directory is not None:
        lines.append(f"report: {directory / 'report.json'}")
    return "\n".join(lines)
