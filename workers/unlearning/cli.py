"""`lethe unlearn`: run one unlearning method on a reference workload and show what it did.

    lethe unlearn --workload bios --method nabla_tau --forget-subjects 5 [--size small|full]
                  [--vs retrain] [--seed N] [--config '{"lr": 1e-4}']

Trains the workload's model on first use (cached on disk), runs the method with a progress bar on stderr,
then prints one JSON line and a table: wall time, and loss with accuracy (classifiers) or perplexity
(language models) on the forget, retain and held-out data, beside the served model and, with --vs retrain,
beside exact retraining. torch is imported only inside the handler.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("unlearn", help="run an unlearning method on a reference workload")
    parser.add_argument("--workload", required=True, choices=("digits", "bios", "minilm"))
    parser.add_argument("--method", required=True, help="registered method name, e.g. nabla_tau")
    parser.add_argument("--forget-subjects", type=int, default=1, metavar="N", help="subjects to forget")
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--vs", choices=("retrain",), help="also run exact retraining and compare")
    parser.add_argument("--seed", type=int, default=0, help="seed of the unlearning run")
    parser.add_argument("--config", type=json.loads, default={}, help="method config overrides (JSON object)")
    parser.set_defaults(func=run_unlearn)


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[float, str], None]]:
    """A tqdm bar on stderr driven by the methods' progress(fraction, message) callback."""
    from tqdm import tqdm

    bar_format = "{l_bar}{bar}| {elapsed}"
    with tqdm(total=1000, desc=label, file=sys.stderr, leave=False, bar_format=bar_format) as bar:

        def update(fraction: float, message: str) -> None:
            bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        yield update


def run_unlearn(args: argparse.Namespace) -> int:
    from workers.unlearning.base import UnlearningContext, get_method
    from workers.unlearning.evaluation import scenario, utility
    from workers.workloads import load_workload

    workload = load_workload(args.workload, args.size)
    with progress_bar(f"training {args.workload} (cached after the first run)") as progress:
        served, record = workload.trained(progress=progress)
    case = scenario(workload, args.forget_subjects)
    sets = case.evaluation_sets()
    report: dict[str, Any] = {
        "workload": args.workload,
        "size": args.size,
        "method": args.method,
        "forget_subjects": case.subjects,
        "n_forget": len(case.forget),
        "n_retain": len(case.retain),
        "seed": args.seed,
        "served": {"metrics": utility(served, sets)},
    }
    runs = [(args.method, args.config)]
    if args.vs == "retrain" and args.method != "retrain":
        runs.append(("retrain", {}))
    for name, config in runs:
        method = get_method(name, **config)
        with progress_bar(name) as progress:
            context = UnlearningContext(training=record, seed=args.seed, progress=progress)
            result = method.unlearn(served, case.forget, case.retain, case.validation, context)
        entry = {"seconds": result.seconds, "exact": result.exact, "metrics": utility(result.adapter, sets)}
        report[name] = entry
    if args.vs == "retrain" and args.method != "retrain":
        report["speedup"] = report["retrain"]["seconds"] / max(report[args.method]["seconds"], 1e-9)
    print(json.dumps(report, default=_jsonable))
    print(format_table(report, [c for c in ("served", args.method, "retrain") if c in report]))
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
