"""`lethe unlearn`: run one unlearning method on a reference workload, or on a registered model, and show
what it did.

    lethe unlearn --workload bios --method nabla_tau --forget-subjects 5 [--size small|medium|full]
                  [--vs retrain] [--seed N] [--config '{"lr": 1e-4}']
    lethe unlearn --model NAME --tenant TENANT --subject ID [--subject ID ...] --method finetune
                  [--version N] [--vs retrain] [--seed N] [--config JSON]

With --model it reads the database (LETHE_DATABASE_URL) and the artifact store, as the pipeline does, and
stores nothing: a dry run of a deletion (workers.pipeline.dry_run).

The workers' modules are imported inside the handler; importing this module's package still needs the
worker extra (the methods import torch), which the root command line checks before it loads this.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from app.commands import command_app
from app.registry.workload_sizes import WorkloadSize

# Options of `lethe unlearn` and `lethe verify`: a command takes them as parameters of these types.
Workload = Annotated[
    Literal["digits", "bios", "minilm"] | None, typer.Option(help="reference workload (or --model)")
]
ForgetSubjects = Annotated[int, typer.Option(metavar="N", help="subjects of the workload to forget")]
Size = Annotated[WorkloadSize, typer.Option(help="workload size")]
Seed = Annotated[int, typer.Option(help="seed of the unlearning run")]
RegisteredModel = Annotated[
    str | None,
    typer.Option(metavar="NAME", help="a registered model, read from the database (or --workload)"),
]
Tenant = Annotated[str | None, typer.Option(help="the tenant of --model, by name")]
Subjects = Annotated[
    list[str] | None,
    typer.Option("--subject", metavar="ID", help="a data subject of --model to forget (repeat)"),
]
Version = Annotated[
    int | None, typer.Option(metavar="N", help="the version of --model (default: the one its alias serves)")
]
EXIT_USAGE = 64  # EX_USAGE (sysexits.h): `lethe verify` answers 2 for an inconclusive verdict
DRY_RUN_NOTE = "dry run: nothing was stored or promoted (a deletion request makes a real deletion)"


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter("expected a JSON object")
    return value


MethodConfig = Annotated[
    dict[str, Any] | None,
    typer.Option(parser=json_object, metavar="JSON", help="method config overrides (JSON object)"),
]

Layout = Annotated[
    str | None,
    typer.Option(
        metavar="SxR",
        help="--workload's model trained in S shards of R slices (SISA; a lineage of its own), e.g. 4x5",
    ),
]

cli = command_app()


def usage_error(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def check_target(
    workload: str | None, model: str | None, tenant: str | None, subjects: list[str] | None
) -> None:
    """Exactly one of --workload and --model; a model needs its tenant and the subjects to forget."""
    if (workload is None) == (model is None):
        usage_error("give exactly one of --workload and --model")
    if model is not None and (not tenant or not subjects):
        usage_error("--model needs --tenant and at least one --subject")


def parse_layout(text: str | None, model: str | None) -> tuple[int, int] | None:
    """--layout SxR as (shards, slices); a registered model's layout is the one it was trained with."""
    if text is None:
        return None
    if model is not None:
        usage_error("--layout trains a workload's model in shards; a registered model keeps its own")
    from app.registry.training_params import layout_of

    try:
        return layout_of(text)
    except ValueError as exc:
        usage_error(f"--layout: {exc}")


@contextmanager
def refusals() -> Iterator[None]:
    """A deletion that cannot be tried ends the command with its reason, not a traceback."""
    from workers.pipeline.dry_run import DryRunRefused

    try:
        yield
    except DryRunRefused as refused:
        usage_error(str(refused))


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[float, str], None]]:
    """A bar on stderr driven by the methods' progress(fraction, message) callback."""
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[message]}"))
    console = Console(stderr=True)
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task(label, total=1.0, message="")

        def update(fraction: float, message: str) -> None:
            progress.update(task, completed=min(max(fraction, 0.0), 1.0), message=message)

        yield update


@cli.command("unlearn")
def run_unlearn(
    method: Annotated[str, typer.Option(help="registered method name, e.g. nabla_tau")],
    workload: Workload = None,
    forget_subjects: ForgetSubjects = 1,
    size: Size = "small",
    model: RegisteredModel = None,
    tenant: Tenant = None,
    subjects: Subjects = None,
    version: Version = None,
    vs: Annotated[Literal["retrain"] | None, typer.Option(help="also run exact retraining")] = None,
    seed: Seed = 0,
    config: MethodConfig = None,
    layout: Layout = None,
) -> int:
    """Run an unlearning method on a reference workload, or on a registered model, and show what it did.

    With --workload, trains the workload's model on first use (cached on disk). With --model, reads the
    version the model's alias serves (or --version), the subjects' samples and the sets, record and policy
    settings the pipeline would use, from the database: a dry run that stores and promotes nothing.
    Runs the method with a progress bar on stderr, then prints one JSON line and a table: wall time, and
    loss with accuracy (classifiers) or perplexity (language models) on the forget, retain and held-out
    data, beside the served model and, with --vs retrain, beside exact retraining.
    """
    check_target(workload, model, tenant, subjects)
    shards = parse_layout(layout, model)
    methods = [method, *(["retrain"] if vs == "retrain" and method != "retrain" else [])]
    if model is not None:
        from workers.pipeline.dry_run import open_deletion

        with refusals():
            deletion = open_deletion(tenant or "", model, subjects or [], methods, version)
        header = {**deletion.describe(), "method": method, "seed": seed}
        header.update(n_forget=len(deletion.sets.forget), n_retain=len(deletion.sets.retain))

        def run(name: str, overrides: dict[str, Any], progress: Callable[[float, str], None]) -> Any:
            return deletion.unlearn(name, overrides, seed, progress)

        compare(header, deletion.served, deletion.evaluation_sets(), methods, config, run)
        print(DRY_RUN_NOTE)
        return 0

    from workers.unlearning.base import UnlearningContext, get_method
    from workers.unlearning.evaluation import scenario
    from workers.workloads import load_workload

    assert workload is not None
    reference = load_workload(workload, size)
    if shards is not None:
        reference = reference.sharded(*shards)
    with progress_bar(f"training {workload} (cached after the first run)") as progress:
        served, record = reference.trained(progress=progress)
    case = scenario(reference, forget_subjects)
    header = {
        "workload": workload,
        "size": size,
        "method": method,
        **({"layout": {"shards": shards[0], "slices": shards[1]}} if shards else {}),
        "forget_subjects": case.subjects,
        "n_forget": len(case.forget),
        "n_retain": len(case.retain),
        "seed": seed,
    }

    def run_on_workload(name: str, overrides: dict[str, Any], progress: Callable[[float, str], None]) -> Any:
        context = UnlearningContext(training=record, seed=seed, progress=progress)
        return get_method(name, **overrides).unlearn(
            served, case.forget, case.retain, case.validation, context
        )

    compare(header, served, case.evaluation_sets(), methods, config, run_on_workload)
    return 0


def compare(
    header: dict[str, Any],
    served: Any,
    sets: dict[str, Any],
    methods: list[str],
    config: dict[str, Any] | None,
    run: Callable[[str, dict[str, Any], Callable[[float, str], None]], Any],
) -> None:
    """Run each method (the first with `config`), then print the JSON line and the table beside `served`."""
    from workers.unlearning.evaluation import utility

    report: dict[str, Any] = {**header, "served": {"metrics": utility(served, sets)}}
    for index, name in enumerate(methods):
        with progress_bar(name) as progress:
            result = run(name, (config or {}) if index == 0 else {}, progress)
        report[name] = {
            "seconds": result.seconds,
            "exact": result.exact,
            "metrics": utility(result.adapter, sets),
        }
    if len(methods) > 1:
        report["speedup"] = report["retrain"]["seconds"] / max(report[methods[0]]["seconds"], 1e-9)
    print(json.dumps(report, default=_jsonable))
    print(format_table(report, ["served", *methods]))


def format_table(report: dict[str, Any], columns: list[str]) -> str:
    """Rows: wall time, then loss and accuracy/perplexity per split; one column per model."""
    metrics = report["served"]["metrics"]
    rows = [("wall time (s)", [_seconds(report[c]) for c in columns])]
    for split in metrics:
        for name in metrics[split]:
            rows.append((f"{split} {name}", [f"{report[c]['metrics'][split][name]:.4f}" for c in columns]))
    width = max(len(r[0]) for r in rows)
    cells = max(12, *(len(c) for c in columns))
    lines = [" " * width + "  " + "  ".join(c.rjust(cells) for c in columns)]
    lines += [label.ljust(width) + "  " + "  ".join(v.rjust(cells) for v in values) for label, values in rows]
    if "speedup" in report:
        lines.append(f"speedup over retrain: {report['speedup']:.1f}x")
    return "\n".join(lines)


def _seconds(entry: dict[str, Any]) -> str:
    return f"{entry['seconds']:.2f}" if "seconds" in entry else "-"


def _jsonable(value: Any) -> Any:
    return float(value) if hasattr(value, "__float__") else str(value)
