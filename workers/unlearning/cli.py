"""`lethe unlearn`: run one unlearning method on a reference workload and show what it did.

    lethe unlearn --workload bios --method nabla_tau --forget-subjects 5 [--size small|full]
                  [--vs retrain] [--seed N] [--config '{"lr": 1e-4}']

The workers' modules are imported inside the handler; importing this module's package still needs the
worker extra (the methods import torch), which the root command line checks before it loads this.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from app.commands import command_app

# Options of `lethe unlearn` and `lethe verify`: a command takes them as parameters of these types.
Workload = Annotated[Literal["digits", "bios", "minilm"], typer.Option(help="reference workload")]
ForgetSubjects = Annotated[int, typer.Option(metavar="N", help="subjects to forget")]
Size = Annotated[Literal["small", "full"], typer.Option(help="workload size")]
Seed = Annotated[int, typer.Option(help="seed of the unlearning run")]


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

cli = command_app()


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
    workload: Workload,
    method: Annotated[str, typer.Option(help="registered method name, e.g. nabla_tau")],
    forget_subjects: ForgetSubjects = 1,
    size: Size = "small",
    vs: Annotated[Literal["retrain"] | None, typer.Option(help="also run exact retraining")] = None,
    seed: Seed = 0,
    config: MethodConfig = None,
) -> int:
    """Run an unlearning method on a reference workload and show what it did.

    Trains the workload's model on first use (cached on disk), runs the method with a progress bar on
    stderr, then prints one JSON line and a table: wall time, and loss with accuracy (classifiers) or
    perplexity (language models) on the forget, retain and held-out data, beside the served model and,
    with --vs retrain, beside exact retraining.
    """
    from workers.unlearning.base import UnlearningContext, get_method
    from workers.unlearning.evaluation import scenario, utility
    from workers.workloads import load_workload

    reference = load_workload(workload, size)
    with progress_bar(f"training {workload} (cached after the first run)") as progress:
        served, record = reference.trained(progress=progress)
    case = scenario(reference, forget_subjects)
    sets = case.evaluation_sets()
    report: dict[str, Any] = {
        "workload": workload,
        "size": size,
        "method": method,
        "forget_subjects": case.subjects,
        "n_forget": len(case.forget),
        "n_retain": len(case.retain),
        "seed": seed,
        "served": {"metrics": utility(served, sets)},
    }
    runs = [(method, config or {})]
    if vs == "retrain" and method != "retrain":
        runs.append(("retrain", {}))
    for name, overrides in runs:
        unlearning = get_method(name, **overrides)
        with progress_bar(name) as progress:
            context = UnlearningContext(training=record, seed=seed, progress=progress)
            result = unlearning.unlearn(served, case.forget, case.retain, case.validation, context)
        entry = {"seconds": result.seconds, "exact": result.exact, "metrics": utility(result.adapter, sets)}
        report[name] = entry
    if vs == "retrain" and method != "retrain":
        report["speedup"] = report["retrain"]["seconds"] / max(report[method]["seconds"], 1e-9)
    print(json.dumps(report, default=_jsonable))
    print(format_table(report, [c for c in ("served", method, "retrain") if c in report]))
    return 0


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
