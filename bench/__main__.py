"""`python -m bench [--quick | --medium | --full]`: every benchmark of issue 7 in one run, written as JSON, as
docs/benchmarks.md (goals, tables, machine, command) and as PNG plots in docs/benchmarks/.

    python -m bench               # --quick: small workload settings, minutes on 2 cores (`make bench`)
    python -m bench --medium      # medium workload settings: exact retrains of minutes, deletions as in life
    python -m bench --full        # full workload settings, 1,000,000 samples for the subject lookup
    python -m bench --smoke       # the tiniest run of every section, written under /tmp (checks the harness)
    python -m bench --render bench/results/quick.json   # regenerate the markdown and plots of a stored run

Sections (--sections to pick): `methods` (per workload and method in a worker process of its own, over
--deletions deletions of different subjects, each a signal carrier whose signal the served model carries:
wall time, speedup over the same deletion's `retrain`, utility, gate verdicts with MIA AUC / TPR beside the
retrain reference, verification time, peak memory), `scaling` (time and forget quality against the forget
set's size), `gate` (the gate's operating characteristics: false rejection of exact retrains of unseen
seeds, false acceptance of bad candidates, bench.gate), `sharded` (SISA's layout: utility against the
unsharded model, sisa's speedup over retraining per (shard, slice), the gate on its candidate, bench.sharded),
`batching` (bench.pipeline), `api` (bench.intake and
bench.provenance). `--update` runs the chosen sections only and merges them into the stored results of the
mode before writing docs/benchmarks.md, so one section can be regenerated without rerunning the others. The
measuring code lives in those modules; this one sequences them, repeats timings and keeps going when one
section fails
(the failure is reported in its place).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.registry.methods import MethodName
from bench import plots, report
from bench.methods import COMPARED, DELETION_METHODS, REFERENCE, UNTOUCHED
from bench.report import ratio_spread, spread
from bench.scaling import add_verification_costs
from bench.unlearning import forget_gap_closed

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("methods", "scaling", "gate", "sharded", "batching", "api")


@dataclass(frozen=True)
class Settings:
    mode: str
    size: str  # the workloads' setting, one of app.registry.workload_sizes.WORKLOAD_SIZES
    workloads: tuple[str, ...] = ("digits", "bios", "minilm")
    # `none` is the untouched model (the gate must refuse it); retrain always runs first.
    methods: tuple[str, ...] = (UNTOUCHED, *COMPARED)
    repeats: int = 3
    # methods section: deletions of different subjects, each method's numbers taken over all of them
    deletions: int = 3
    repeat_budget_seconds: float = 30.0  # repeats of one method stop once they have taken this long
    verify: bool = True
    worker_timeout_seconds: float = 1800.0
    scaling_workloads: tuple[str, ...] = ("digits", "bios", "minilm")
    scaling_methods: tuple[str, ...] = DELETION_METHODS
    scaling_sizes: tuple[int, ...] = (1, 10, 100)
    scaling_repeats: int = 1
    # bench.gate: runs per workload and forget-set size (each: an exact retrain and three bad candidates)
    gate_sizes: tuple[int, ...] = (1, 5)
    gate_runs: int = 10
    # bench.pipeline: one request alone, N together (coalesced into jobs), N one at a time
    batching_requests: int = 20
    batching_window_seconds: float = 2.0
    intake_runs: int = 3
    intake_duration: int = 5
    intake_connections: str = "8,16,32,64"  # the load levels (bench.intake sweeps them)
    intake_subjects: int = 2000
    provenance_runs: int = 3
    provenance_samples: int = 100_000
    provenance_batch: int = 10_000
    # Torch threads of the workers (None: torch's default, one per core). One by default: on a 2-core machine
    # shared with other work, two OpenMP threads made a digits retrain 20x slower (74 s against 3.8 s).
    torch_threads: int | None = 1
    seed: int = 0


MODES = {
    "quick": Settings(mode="quick", size="small"),
    "medium": Settings(
        mode="medium",
        size="medium",
        # an exact retrain takes 2-5 min here: two repeats per deletion, several deletions
        repeat_budget_seconds=300.0,
        worker_timeout_seconds=2 * 3600.0,
    ),
    "full": Settings(
        mode="full",
        size="full",
        repeat_budget_seconds=900.0,
        torch_threads=None,
        worker_timeout_seconds=4 * 3600.0,
        scaling_repeats=3,
        batching_requests=100,
        intake_duration=10,
        intake_subjects=5000,
        provenance_samples=1_000_000,
    ),
    "smoke": Settings(
        mode="smoke",
        size="small",
        workloads=("digits",),
        methods=(UNTOUCHED, MethodName.DEEPOBLIVIATE.value, MethodName.NABLA_TAU.value),
        repeats=2,
        repeat_budget_seconds=5.0,
        deletions=1,
        scaling_workloads=("digits",),
        scaling_methods=(MethodName.NABLA_TAU.value,),
        scaling_sizes=(1, 10),
        gate_sizes=(1,),
        gate_runs=1,
        batching_requests=3,
        intake_runs=1,
        intake_duration=2,
        intake_connections="4,8",
        intake_subjects=300,
        provenance_runs=1,
        provenance_samples=20_000,
        provenance_batch=5_000,
    ),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- methods: one worker process per (workload, method) --------------------------------------------


# Subjects per deletion in the methods section (the scaling section varies the forget set's size).
SUBJECTS_PER_DELETION = 1


def methods_section(s: Settings) -> dict[str, Any]:
    from bench.unlearning import pick_forget_subjects
    from workers.workloads import load_workload

    out: dict[str, Any] = {"n_subjects": SUBJECTS_PER_DELETION, "deletions": s.deletions, "workloads": []}
    for name in s.workloads:
        started = time.perf_counter()
        load_workload(name, s.size, s.seed).trained()  # built once (cached on disk) before any worker runs
        log(
            f"{name}: trained model ready ({time.perf_counter() - started:.0f} s; cached after the first run)"
        )
        picked = pick_forget_subjects(name, s.size, s.deletions * SUBJECTS_PER_DELETION, s.seed)
        skipped = ", ".join(f"{j['subject']} ({j['verdict']})" for j in picked["skipped"]) or "none"
        log(
            f"{name}: forget subjects {', '.join(picked['chosen']) or 'none'}; {picked['tried']} of "
            f"{picked['carriers']} signal carriers tried, skipped (the gate does not fail the untouched "
            f"model for them): {skipped}"
        )
        chosen = picked.pop("chosen")
        deletions = [
            chosen[k : k + SUBJECTS_PER_DELETION]
            for k in range(0, len(chosen) - SUBJECTS_PER_DELETION + 1, SUBJECTS_PER_DELETION)
        ]
        entry: dict[str, Any] = {
            "workload": name,
            "size": s.size,
            "n_subjects": SUBJECTS_PER_DELETION,
            "subject_choice": picked,
            "deletions": [],
            "rows": [],
        }
        if not deletions:
            entry["unavailable"] = (
                f"no signal carrier qualifies: the gate did not fail the untouched model for any of the "
                f"{picked['tried']} tried"
            )
            out["workloads"].append(entry)
            continue
        per_deletion = []
        for k, subjects in enumerate(deletions):
            log(f"{name}: deletion {k + 1}/{len(deletions)} ({', '.join(subjects)})")
            # DeepObliviate's sweep covers every block whatever the subject: once per workload
            rows = [worker_row(s, name, method, subjects, sweep=k == 0) for method in (REFERENCE, *s.methods)]
            compare_with_retrain(rows)
            per_deletion.append(rows)
            n_forget = next((r["n_forget"] for r in rows if "n_forget" in r), None)
            entry["deletions"].append({"subjects": subjects, "n_forget": n_forget})
        entry["rows"] = combine_deletions(per_deletion)
        entry["n_forget"] = entry["deletions"][0]["n_forget"]
        out["workloads"].append(entry)
    return out


def worker_row(
    s: Settings, workload: str, method: str, subjects: list[str], sweep: bool = False
) -> dict[str, Any]:
    """One method on one deletion of `workload` in a worker process of its own (bench.memory)."""
    from bench.memory import run_worker

    options = {
        "workload": workload,
        "method": method,
        "size": s.size,
        "subjects": len(subjects),
        "forget": ",".join(subjects),
        "seed": s.seed,
        "repeats": s.repeats,
        "repeat_budget": s.repeat_budget_seconds,
        "verify": s.verify,
        # DeepObliviate's cost depends on the block holding the subject: on digits, one from every block
        "sweep": sweep and method == MethodName.DEEPOBLIVIATE and workload == "digits",
    }
    log(f"{workload}: {method} (worker process)")
    row = run_worker(options, timeout=s.worker_timeout_seconds)
    if isinstance(row.get("seconds"), list):
        row["seconds"] = spread(row["seconds"])
    return row


def compare_with_retrain(rows: list[dict[str, Any]]) -> None:
    """Speedups, verification costs and forget gap closed, against the first row (`retrain`)."""
    retrain = rows[0]
    retrain_seconds = retrain.get("seconds", {})
    add_verification_costs(retrain, retrain_seconds)
    for row in rows[1:]:
        if row.get("seconds", {}).get("n") and retrain_seconds.get("n"):
            row["speedup"] = ratio_spread(retrain_seconds, row["seconds"])
        add_verification_costs(row, retrain_seconds)
        if "metrics" in row and "metrics" in retrain:
            row["forget_gap_closed"] = forget_gap_closed(
                row["metrics"], row["served_metrics"], retrain["metrics"]
            )


def combine_deletions(per_deletion: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per method over the deletions (each a list of rows, `retrain` first, methods in one order).

    Wall times pool every timed run of every deletion; the speedup is taken per deletion (that deletion's
    retrain over the method's, both medians) and given as median with min-max over the deletions; the gate's
    verdicts are counted; other numbers are medians over the deletions. Each deletion's own row is kept
    under `deletions`.
    """
    combined = []
    for runs in zip(*per_deletion, strict=True):
        measured = [r for r in runs if "error" not in r and "unavailable" not in r]
        if not measured:  # the method failed or does not apply on every deletion: its first reason
            combined.append({**runs[0], "deletions": list(runs)})
            continue
        row: dict[str, Any] = {
            "method": measured[0]["method"],
            "exact": measured[0].get("exact"),
            "deletions": list(runs),
            "seconds": spread(v for r in measured for v in (r.get("seconds") or {}).get("values", [])),
        }
        if len(measured) < len(runs):
            row["failed_deletions"] = len(runs) - len(measured)
        speedups = [r["speedup"]["median"] for r in measured if r.get("speedup")]
        if speedups:
            row["speedup"] = {**spread(speedups), "over": "deletions"}
        for key in ("speedup_with_verification", "forget_gap_closed"):
            values = [r[key] for r in measured if r.get(key) is not None]
            if values:
                row[key] = statistics.median(values)
        for key in ("metrics", "served_metrics"):
            if all(key in r for r in measured):
                row[key] = median_tree([r[key] for r in measured])
        if all("memory" in r for r in measured):  # the worst deletion: a worker must fit that
            row["memory"] = {
                k: max(r["memory"].get(k) or 0.0 for r in measured) for k in measured[0]["memory"]
            }
        sweep = next((r["sweep"] for r in measured if r.get("sweep")), None)
        if sweep:
            row["sweep"] = sweep
        checked = [r["verification"] for r in measured if r.get("verification")]
        if checked:
            row["verification"] = combine_verifications(checked)
        combined.append(row)
    return combined


def combine_verifications(checked: list[dict[str, Any]]) -> dict[str, Any]:
    """The gate over the deletions: verdict counts, `verdict` the common one ("mixed" when they differ),
    the rules that decided any of them, and medians of the metrics and times."""
    verdicts: dict[str, int] = {}
    for v in checked:
        verdicts[v["verdict"]] = verdicts.get(v["verdict"], 0) + 1
    labels = {v.get("label") for v in checked}
    out: dict[str, Any] = {
        "n": len(checked),
        "verdicts": verdicts,
        "verdict": next(iter(verdicts)) if len(verdicts) == 1 else "mixed",
        "label": labels.pop() if len(labels) == 1 else None,
        "deciding_rules": sorted({rule for v in checked for rule in v.get("deciding_rules", [])}),
        "failed_rules": sorted({rule for v in checked for rule in v.get("failed_rules", [])}),
        "metrics": median_tree([v.get("metrics", {}) for v in checked]),
        "primary_attack": checked[0].get("primary_attack"),
        "gate_fpr": checked[0].get("gate_fpr"),
        "candidate": checked[0].get("candidate"),
        "reference_training_seconds_when_built": next(
            (
                v["reference_training_seconds_when_built"]
                for v in checked
                if v.get("reference_training_seconds_when_built") is not None
            ),
            None,
        ),
    }
    for key in ("verification_seconds", "share_of_unlearning", "unlearning_seconds"):
        values = [v[key] for v in checked if v.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    return out


def median_tree(trees: list[Any]) -> Any:
    """Element-wise median of equally shaped nested dicts of numbers (keys all of them have)."""
    first = trees[0]
    if isinstance(first, dict):
        common = [k for k in first if all(isinstance(t, dict) and k in t for t in trees)]
        return {k: median_tree([t[k] for t in trees]) for k in common}
    if all(isinstance(t, int | float) and not isinstance(t, bool) for t in trees):
        return statistics.median(trees)
    return first


# -- scaling -----------------------------------------------------------------------------------------


def scaling_section(s: Settings) -> dict[str, Any]:
    from bench import scaling

    return scaling.run(
        s.scaling_workloads,
        s.scaling_methods,
        s.size,
        s.scaling_sizes,
        s.scaling_repeats,
        s.repeat_budget_seconds,
        s.verify,
        s.seed,
        log=log,
    )


# -- gate: bench.gate ---------------------------------------------------------------------------------


def gate_section(s: Settings) -> dict[str, Any]:
    from bench import gate
    from workers.workloads import cache_dir

    checkpoint = cache_dir("bench") / f"gate-{s.mode}-partial.json"
    return gate.run(s.workloads, s.gate_sizes, s.gate_runs, s.size, log=log, checkpoint=checkpoint)


# -- sharded: bench.sharded ---------------------------------------------------------------------------


def sharded_section(s: Settings) -> dict[str, Any]:
    from bench import sharded

    return sharded.run(s.workloads, s.size, s.repeats, log=log)


# -- batching: bench.pipeline --------------------------------------------------------------------------


def batching_section(s: Settings) -> dict[str, Any]:
    from bench import pipeline

    args = argparse.Namespace(requests=s.batching_requests, window=s.batching_window_seconds, json=None)
    return {"config": vars(args), **pipeline.run(args)}


# -- API: bench.intake and bench.provenance ------------------------------------------------------------


def api_section(s: Settings) -> dict[str, Any]:
    from bench import intake, provenance

    out: dict[str, Any] = {}
    runs = []
    for k in range(s.intake_runs):
        log(f"api: intake run {k + 1}/{s.intake_runs}")
        args = argparse.Namespace(
            duration=s.intake_duration,
            connections=s.intake_connections,
            threads=1,
            workers=1,
            subjects=s.intake_subjects,
            json=None,
        )
        runs.append(intake.run(args))
    out["intake"] = {"runs": runs, "summary": _intake_summary(runs)}
    runs = []
    for k in range(s.provenance_runs):
        log(f"api: provenance run {k + 1}/{s.provenance_runs} ({s.provenance_samples:,} samples)")
        args = argparse.Namespace(
            samples=s.provenance_samples, batch=s.provenance_batch, concurrency=2, json=True
        )
        runs.append(provenance.run(args))
    out["provenance"] = {"runs": runs, "summary": _provenance_summary(runs)}
    return out


def _by_name(run: dict[str, Any], prefix: str) -> dict[str, Any]:
    return next(r for r in run["results"] if r["name"].startswith(prefix))


def _intake_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    loads = {"ceiling": "bare FastAPI", "intake": "POST /v1/deletion-requests", "polling": "GET "}
    fields = ("requests_per_second", "p50_ms", "p99_ms", "errors", "server_cpu_ms_per_request")
    summary: dict[str, Any] = {"intake_vs_ceiling": spread(r["intake_vs_ceiling"] for r in runs)}
    for key, prefix in loads.items():
        for field in fields:
            if field in runs[0]["results"][0]:
                summary[f"{key}_{field}"] = spread(_by_name(r, prefix)[field] for r in runs)
    if all("levels" in r for r in runs):  # the load sweep: per level, then the capacity under the SLO
        levels = []
        for index, level in enumerate(runs[0]["levels"]):
            at = [r["levels"][index] for r in runs]
            entry: dict[str, Any] = {"connections": level["connections"]}
            for key in ("ceiling", "intake"):
                for field in fields:
                    entry[f"{key}_{field}"] = spread(a[key][field] for a in at)
            entry["intake_vs_ceiling"] = spread(
                a["intake"]["requests_per_second"] / a["ceiling"]["requests_per_second"] for a in at
            )
            levels.append(entry)
        capacities = [r["capacity"] for r in runs]
        summary["levels"] = levels
        summary["capacity"] = {
            "slo_p99_ms": capacities[0]["slo_p99_ms"],
            "share": spread(c["share"] for c in capacities),
            "intake_requests_per_second": spread(c["intake_requests_per_second"] for c in capacities),
            "ceiling_requests_per_second": spread(c["ceiling_requests_per_second"] for c in capacities),
            "intake_connections": [c["intake_connections"] for c in capacities],
            "intake_p99_ms": [c["intake_p99_ms"] for c in capacities],
        }
        summary["requests_stored"] = [r["intake_requests_stored"] for r in runs]
        summary["requests_answered"] = [r["intake_requests_answered"] for r in runs]
    return summary


def _provenance_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "samples_per_second": spread(r["samples_per_second"] for r in runs),
        "cpu_us_per_sample": spread(r["cpu_us_per_sample"] for r in runs),
        "cpu_bound_samples_per_second": spread(r["cpu_bound_samples_per_second"] for r in runs),
        "lookup_p50_ms": spread(r["subject_lookup_at_size"]["p50_ms"] for r in runs),
        "lookup_p99_ms": spread(r["subject_lookup_at_size"]["p99_ms"] for r in runs),
        "tenant_samples": runs[0]["subject_lookup_at_size"]["tenant_samples"],
        "lookups_per_run": runs[0]["subject_lookup_at_size"]["lookups"],
    }


SECTION_RUNNERS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "methods": methods_section,
    "scaling": scaling_section,
    "gate": gate_section,
    "sharded": sharded_section,
    "batching": batching_section,
    "api": api_section,
}


# -- the run -------------------------------------------------------------------------------------------


def run(s: Settings, sections: list[str], command: str) -> dict[str, Any]:
    results: dict[str, Any] = {
        "mode": s.mode,
        "command": command,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": report.describe_machine(),
        "settings": dataclasses.asdict(s),
        "sections": {},
        "section_seconds": {},
    }
    started = time.perf_counter()
    for name in sections:
        log(f"section {name} (load average {report.load_average()})")
        t = time.perf_counter()
        try:
            results["sections"][name] = SECTION_RUNNERS[name](s)
        except Exception as exc:  # one broken section must not cost the others' numbers
            traceback.print_exc()
            results["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        results["section_seconds"][name] = round(time.perf_counter() - t, 1)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["load_average_at_end"] = report.load_average()
    return results


def write_outputs(results: dict[str, Any], json_path: Path | None, docs_path: Path) -> None:
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1, default=float, allow_nan=True) + "\n")
    plot_dir = docs_path.with_suffix("")  # docs/benchmarks.md -> docs/benchmarks/
    written = plots.write_all(results, plot_dir)
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    docs_path.write_text(
        report.render(results, {name: path.relative_to(docs_path.parent) for name, path in written.items()})
    )
    log(f"wrote {docs_path} and {len(written)} plots in {plot_dir}" + (f", {json_path}" if json_path else ""))


def command_line(argv: list[str]) -> str:
    inner = "python -m bench " + shlex.join(argv)
    return f"make bench ({inner.strip()})" if "MAKELEVEL" in os.environ else inner.strip()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="(default)")
    mode.add_argument("--medium", dest="mode", action="store_const", const="medium")
    mode.add_argument("--full", dest="mode", action="store_const", const="full")
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset of: " + ", ".join(SECTIONS)
    )
    parser.add_argument("--workloads", help="override the mode's workloads (comma-separated)")
    parser.add_argument(
        "--methods", help="override the mode's methods (comma-separated; retrain always runs)"
    )
    parser.add_argument(
        "--deletions", type=int, help="methods section: deletions of different subjects (mode's default)"
    )
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/<mode>.json)")
    parser.add_argument("--docs", type=Path, help="markdown report (default docs/benchmarks.md)")
    parser.add_argument("--threads", type=int, help="torch threads per worker (0: one per core)")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only regenerate markdown and plots")
    parser.add_argument(
        "--update", action="store_true", help="merge the sections run into the stored results of the mode"
    )
    args = parser.parse_args(argv)

    if args.render:
        results = json.loads(args.render.read_text())
        write_outputs(results, None, args.docs or ROOT / "docs" / "benchmarks.md")
        return 0
    settings = MODES[args.mode or "quick"]
    if args.threads is not None:
        settings = dataclasses.replace(settings, torch_threads=args.threads or None)
    if settings.torch_threads:  # before torch is imported here or in any worker process
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(settings.torch_threads)
    if args.methods:
        chosen_methods = tuple(m for m in args.methods.split(",") if m != REFERENCE)
        scaled = tuple(m for m in chosen_methods if m != UNTOUCHED)
        settings = dataclasses.replace(settings, methods=chosen_methods, scaling_methods=scaled)
    if args.deletions is not None:
        if args.deletions < 1:
            parser.error("--deletions must be at least 1")
        settings = dataclasses.replace(settings, deletions=args.deletions)
    if args.workloads:
        chosen = tuple(args.workloads.split(","))
        settings = dataclasses.replace(settings, workloads=chosen, scaling_workloads=chosen)
    smoke = settings.mode == "smoke"
    scratch = Path("/tmp/lethe-bench-smoke")
    json_path = args.out or (
        scratch / "smoke.json" if smoke else ROOT / "bench" / "results" / f"{settings.mode}.json"
    )
    docs_path = args.docs or (scratch / "benchmarks.md" if smoke else ROOT / "docs" / "benchmarks.md")
    sections = [name for name in args.sections.split(",") if name]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    results = run(settings, sections, command_line(argv))
    if args.update and json_path.exists():
        results = merge_sections(json.loads(json_path.read_text()), results)
    write_outputs(results, json_path, docs_path)
    return 0


def merge_sections(stored: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """The stored run with the fresh run's sections in place of its own; each merged section keeps the
    command and times of the run that measured it."""
    merged = dict(stored)
    merged["sections"] = {**stored.get("sections", {})}
    merged["section_seconds"] = {**stored.get("section_seconds", {})}
    for name, section in fresh["sections"].items():
        measured = {
            **section,
            "command": fresh["command"],
            "started_at": fresh["started_at"],
            "machine_at_run": fresh["machine"],
        }
        if name == "gate":  # rows per workload: a run of some workloads keeps the others' rows
            from bench import gate

            measured = gate.merge(stored.get("sections", {}).get(name), measured)
        merged["sections"][name] = measured
        merged["section_seconds"][name] = fresh["section_seconds"][name]
    return merged


if __name__ == "__main__":
    sys.exit(main())
