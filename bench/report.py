"""The benchmark report: spreads of repeated timings, the machine, issue 7's goals and docs/benchmarks.md.

Everything here reads the result dictionary that `python -m bench` assembles (also written as JSON); nothing
is measured here, so the markdown can be regenerated from a stored JSON file with `python -m bench --render`.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench import gate, sharded
from bench.measured import measured_at
from bench.methods import DELETION_METHODS

ROOT = Path(__file__).resolve().parent.parent

# The goals tracked at the top of docs/benchmarks.md (issue 7, "Done when").
SEED_METHODS = DELETION_METHODS
GOAL_SPEEDUP = 20.0
GOAL_SUBJECTS = (1, 5, 20)
GOAL_EXACT_DIGITS_SPEEDUP = 5.0
GOAL_VERIFICATION_SHARE = 0.25
GOAL_INTAKE_SHARE = 0.25
GOAL_INTAKE_P99_MS = 50.0
GOAL_SAMPLES_PER_SECOND = 50_000


# -- numbers ---------------------------------------------------------------------------------------


def spread(values: Iterable[float]) -> dict[str, Any]:
    """Median with min and max of repeated measurements (n stated; min = max when n = 1)."""
    values = [float(v) for v in values]
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_spread(s: dict[str, Any] | None, digits: int = 2) -> str:
    """'9.49 (8.90-10.1, n=3)'; a single run reads '9.49 (n=1)'."""
    if not s or not s.get("n"):
        return "-"
    if s["n"] == 1:
        return f"{fmt(s['median'], digits)} (n=1)"
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}-{fmt(s['max'], digits)}, n={s['n']})"


def ratio_spread(numerator: dict[str, Any], denominator: dict[str, Any]) -> dict[str, Any] | None:
    """numerator/denominator of two spreads: median over median, range from the extreme pairs."""
    if not numerator.get("n") or not denominator.get("n"):
        return None
    tiny = 1e-9
    return {
        "median": numerator["median"] / max(denominator["median"], tiny),
        "min": numerator["min"] / max(denominator["max"], tiny),
        "max": numerator["max"] / max(denominator["min"], tiny),
        "n": min(numerator["n"], denominator["n"]),
    }


def fmt_speedup(s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    if s["n"] == 1 or s["min"] == s["max"]:
        return f"{s['median']:.1f}x"
    return f"{s['median']:.1f}x ({s['min']:.1f}-{s['max']:.1f})"


# -- the machine -----------------------------------------------------------------------------------


def describe_machine() -> dict[str, Any]:
    """Cores, memory, CPU model, torch version, accelerator and load average, read at the start of a run."""
    import torch

    load = os.getloadavg()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gb": round(_meminfo_kb("MemTotal") / 1024**2, 1),
        "memory_available_gb_at_start": round(_meminfo_kb("MemAvailable") / 1024**2, 1),
        "load_average_at_start": [round(x, 2) for x in load],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)",
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_worktree_changed": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_kb(key: str) -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# -- goals -----------------------------------------------------------------------------------------

MET, NOT_MET, PARTLY, NOT_MEASURED = "met", "NOT MET", "partly met", "not measured"


def goals(results: dict[str, Any]) -> list[dict[str, str]]:
    """Each goal of issue 7 with what this run measured and whether it is met."""
    sections = results.get("sections", {})
    size = results["settings"]["size"]
    return [
        *_seed_method_goals(sections, size),
        _exact_digits_goal(sections),
        sharded.goal(sections.get("sharded")),
        _verification_goal(sections),
        gate.goal(sections.get("gate")),
        _intake_goal(sections),
        _registration_goal(sections),
    ]


def _gate_points(sections: dict[str, Any], workload: str) -> dict[int, list[dict[str, Any]]]:
    """Per forget-set size: the seed methods' verified rows (methods section at 1 subject, scaling beyond)."""
    points: dict[int, list[dict[str, Any]]] = {}
    for entry in sections.get("methods", {}).get("workloads", []):
        if entry.get("workload") == workload:
            points.setdefault(entry["n_subjects"], []).extend(
                r for r in entry.get("rows", []) if r.get("method") in SEED_METHODS
            )
    for entry in sections.get("scaling", {}).get("workloads", []):
        if entry.get("workload") == workload:
            for point in entry.get("points", []):
                if point.get("method") in SEED_METHODS and point["n_subjects"] != 1:
                    points.setdefault(point["n_subjects"], []).append(point)
    return points


def _scaling_cap(sections: dict[str, Any], workload: str) -> int | None:
    for entry in sections.get("scaling", {}).get("workloads", []):
        if entry.get("workload") == workload:
            return entry.get("cap_subjects")
    return None


def _best_passing(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    passing = [r for r in rows if _verdict(r) == "pass" and r.get("speedup")]
    return max(passing, key=lambda r: r["speedup"]["median"], default=None)


def _verdict(row: dict[str, Any]) -> str | None:
    return (row.get("verification") or {}).get("verdict")


def _seed_method_goals(sections: dict[str, Any], size: str) -> list[dict[str, str]]:
    out = []
    for workload in ("bios", "minilm"):
        points = _gate_points(sections, workload)
        cap = _scaling_cap(sections, workload)
        cells, statuses = [], []
        for n in GOAL_SUBJECTS:
            if n not in points:
                beyond = cap is not None and n > cap
                cells.append(f"{n}: not run" + (f" (above the 30 % cap, {cap} subjects)" if beyond else ""))
                statuses.append(NOT_MEASURED)
                continue
            best = _best_passing(points[n])
            fastest = max(
                (r for r in points[n] if r.get("speedup")), key=lambda r: r["speedup"]["median"], default=None
            )
            faster = (
                f"fastest {fastest['method']} {fastest['speedup']['median']:.1f}x, {_verdict(fastest)}"
                if fastest and fastest is not best
                else ""
            )
            if best is None:
                cells.append(f"{n}: no seed method passed ({faster or 'no result'})")
                statuses.append(NOT_MET)
            else:
                speedup = best["speedup"]["median"]
                cells.append(
                    f"{n}: {best['method']} passed at {speedup:.1f}x" + (f" ({faster})" if faster else "")
                )
                statuses.append(MET if speedup >= GOAL_SPEEDUP else NOT_MET)
        status = _combine(statuses)
        note = (
            "" if size == "full" else f" ({size} settings in this run; the goal is stated for full settings)"
        )
        out.append(
            {
                "goal": f"{workload}: a seed method passes the gate >= {GOAL_SPEEDUP:.0f}x faster than "
                f"retraining, for {', '.join(map(str, GOAL_SUBJECTS))} subjects",
                "measured": "; ".join(cells) + note,
                "status": status if size == "full" or status == NOT_MEASURED else f"{status} ({size})",
            }
        )
    return out


def _exact_digits_goal(sections: dict[str, Any]) -> dict[str, str]:
    goal = (
        f"digits: exact unlearning from subject-aligned blocks >= {GOAL_EXACT_DIGITS_SPEEDUP:.0f}x faster "
        "than retraining for one subject"
    )
    for entry in sections.get("methods", {}).get("workloads", []):
        if entry.get("workload") != "digits":
            continue
        row = next((r for r in entry.get("rows", []) if r.get("method") == "deepobliviate"), None)
        if not row or not row.get("speedup"):
            break
        sweep = row.get("sweep") or {}
        mean = sweep.get("mean_speedup_over_subjects")
        chosen = row["speedup"]["median"]
        measured = f"deepobliviate {chosen:.1f}x for the benchmark's subject (verdict {_verdict(row) or '-'})"
        if mean is not None:
            measured += (
                f"; {mean:.1f}x averaged over all training subjects ({sweep.get('num_blocks')} blocks)"
            )
        judged = mean if mean is not None else chosen
        return {
            "goal": goal,
            "measured": measured,
            "status": MET if judged >= GOAL_EXACT_DIGITS_SPEEDUP else NOT_MET,
        }
    return {"goal": goal, "measured": "digits not run", "status": NOT_MEASURED}


def _verification_goal(sections: dict[str, Any]) -> dict[str, str]:
    goal = f"verification <= {GOAL_VERIFICATION_SHARE:.0%} of unlearning time (reference models cached)"
    shares = []
    for entry in sections.get("methods", {}).get("workloads", []):
        for row in entry.get("rows", []):
            share = (row.get("verification") or {}).get("share_of_unlearning")
            if share is not None:
                shares.append((share, f"{entry['workload']}/{row['method']}"))
    if not shares:
        return {"goal": goal, "measured": "no verification ran", "status": NOT_MEASURED}
    within = [name for share, name in shares if share <= GOAL_VERIFICATION_SHARE]
    worst = max(shares)
    measured = (
        f"{len(within)} of {len(shares)} method runs within; median share "
        f"{statistics.median(s for s, _ in shares):.0%}, worst {worst[0]:.0%} ({worst[1]}); the methods "
        "table's last column gives the speedups once verification is paid"
    )
    status = MET if len(within) == len(shares) else (PARTLY if within else NOT_MET)
    return {"goal": goal, "measured": measured, "status": status}


def _intake_goal(sections: dict[str, Any]) -> dict[str, str]:
    goal = f"intake >= {GOAL_INTAKE_SHARE:.0%} of the bare FastAPI ceiling, p99 < {GOAL_INTAKE_P99_MS:.0f} ms"
    intake = sections.get("api", {}).get("intake")
    if not intake or "summary" not in intake:
        return {"goal": goal, "measured": "not run", "status": NOT_MEASURED}
    s = intake["summary"]
    share, p99 = s["intake_vs_ceiling"]["median"], s["intake_p99_ms"]["median"]
    capacity = s.get("capacity")
    if capacity is None:  # a run from before the load sweep: one level only
        measured = f"{share:.0%} of the ceiling (median of n={s['intake_vs_ceiling']['n']}), p99 {p99:.1f} ms"
        statuses = [share >= GOAL_INTAKE_SHARE, p99 < GOAL_INTAKE_P99_MS]
        status = MET if all(statuses) else (PARTLY if any(statuses) else NOT_MET)
        return {"goal": goal, "measured": measured, "status": status}
    best = capacity["share"]["median"]
    reference = intake["runs"][0]["config"].get("reference_connections", 16)
    most = fmt(capacity["intake_requests_per_second"]["median"], 0)
    ceiling = fmt(capacity["ceiling_requests_per_second"]["median"], 0)
    measured = (
        f"{best:.0%} of the ceiling (median of n={capacity['share']['n']}): intake's most requests/s "
        f"with p99 < {capacity['slo_p99_ms']:.0f} ms, {most}, against the bare endpoint's most, {ceiling}; "
        f"at {reference} connections alone {share:.0%}, p99 {p99:.1f} ms"
    )
    status = MET if best >= GOAL_INTAKE_SHARE else (PARTLY if best > 0 else NOT_MET)
    return {"goal": goal, "measured": measured, "status": status}


def _registration_goal(sections: dict[str, Any]) -> dict[str, str]:
    goal = f"{GOAL_SAMPLES_PER_SECOND:,} samples/s registered (bulk provenance)"
    provenance = sections.get("api", {}).get("provenance")
    if not provenance or "summary" not in provenance:
        return {"goal": goal, "measured": "not run", "status": NOT_MEASURED}
    s = provenance["summary"]
    wall, cpu_bound = s["samples_per_second"]["median"], s["cpu_bound_samples_per_second"]["median"]
    measured = (
        f"{wall:,.0f} samples/s wall clock; {cpu_bound:,.0f} samples/s from CPU time per sample "
        "(what two free cores would give)"
    )
    status = MET if wall >= GOAL_SAMPLES_PER_SECOND else NOT_MET
    return {"goal": goal, "measured": measured, "status": status}


def _combine(statuses: Sequence[str]) -> str:
    if all(s == MET for s in statuses):
        return MET
    if all(s == NOT_MEASURED for s in statuses):
        return NOT_MEASURED
    if any(s == MET for s in statuses):
        return PARTLY
    return NOT_MET


# -- markdown --------------------------------------------------------------------------------------

LM_TASKS = ("causal-lm",)


def render(results: dict[str, Any], plots: dict[str, Path]) -> str:
    """docs/benchmarks.md from one run's results; `plots`: figure name -> path relative to the markdown."""
    sections = results.get("sections", {})
    parts = [
        _header(results),
        _goals_table(results),
        _machine(results),
        _methods(sections.get("methods"), plots),
        _scaling(sections.get("scaling"), plots),
        gate.render(sections.get("gate"), results["command"]),
        sharded.render(sections.get("sharded"), results["command"]),
        _batching(sections.get("batching")),
        _api(sections.get("api"), plots),
        _memory(sections.get("methods")),
        _run_notes(results),
    ]
    return "\n\n".join(p for p in parts if p).rstrip() + "\n"


def _header(results: dict[str, Any]) -> str:
    s = results["settings"]
    minutes = results.get("seconds", 0) / 60
    updated = sorted(n for n, section in results["sections"].items() if section.get("machine_at_run"))
    later = (
        f" Sections {', '.join(updated)} were measured again later (`--update`), each in a run of its own "
        "that it names with its machine and commit."
        if updated
        else ""
    )
    return (
        "# Benchmarks\n\n"
        f"Generated by `python -m bench` (code in `bench/`); do not edit by hand. "
        f"Mode **{results['mode']}**: workload settings `{s['size']}`"
        + (" (the bios and minilm goals are stated for full settings)" if s["size"] != "full" else "")
        + f". The base run started {results['started_at']} and took {minutes:.1f} min.{later}\n\n"
        f"Command: `{results['command']}` (medium settings: `make bench BENCH_ARGS=--medium`, full: "
        "`BENCH_ARGS=--full`)  \n"
        f"Raw numbers: `bench/results/{results['mode']}.json`. Timings are medians with (min-max, n = number "
        "of timed runs); speedups divide the median `retrain` time of the same run by the method's, the "
        "range pairing the extremes (in the methods section: per deletion, against that deletion's retrain, "
        "with the median and range over the deletions)."
    )


def _goals_table(results: dict[str, Any]) -> str:
    rows = [
        "## Goals (issue 7) and where they stand",
        "",
        "| goal | measured in this run | status |",
        "|---|---|---|",
    ]
    for g in goals(results):
        status = g["status"] if g["status"].startswith("met") else f"**{g['status']}**"
        rows.append(f"| {g['goal']} | {g['measured']} | {status} |")
    return "\n".join(rows)


def _machine(results: dict[str, Any]) -> str:
    m = results["machine"]
    return "\n".join(
        [
            "## Machine",
            "",
            f"- CPU: {m['cpu_model']}, {m['cores']} cores ({m['cores_usable']} usable), "
            f"torch threads {m['torch_threads']}",
            f"- memory: {m['memory_gb']} GB ({m['memory_available_gb_at_start']} GB available at start)",
            f"- accelerator: {m['accelerator']}; torch {m['torch']}, Python {m['python']}, {m['os']}",
            f"- load average (1/5/15 min) at start: {', '.join(map(str, m['load_average_at_start']))}; "
            "at end: "
            f"{', '.join(map(str, results.get('load_average_at_end', [])))}",
            f"- code: commit {m['git_commit'] or '?'}"
            + (" plus uncommitted changes" if m["git_worktree_changed"] else ""),
        ]
    )


def _unavailable(section: dict[str, Any] | None) -> str | None:
    if section is None:
        return "not run in this mode"
    if "error" in section:  # the exception's last words on one line: the traceback is in the run's log
        return "FAILED: " + " ".join(section["error"].split())[-400:]
    if "unavailable" in section:
        return f"unavailable: {section['unavailable']}"
    return None


def _utility_cell(metrics: dict[str, Any] | None, split: str) -> str:
    if not metrics or split not in metrics:
        return "-"
    numbers = metrics[split]
    if "perplexity" in numbers:
        return f"{numbers['loss']:.3f} / ppl {numbers['perplexity']:.2f}"
    return f"{numbers['loss']:.3f} / acc {numbers['accuracy']:.3f}"


def _mia_cells(verification: dict[str, Any] | None) -> tuple[str, str]:
    if not verification or "metrics" not in verification:
        return "-", "-"
    attack, metrics = verification.get("primary_attack"), verification["metrics"]
    tag = f"tpr_{verification.get('gate_fpr', 0.01):g}"

    def pair(metric: str) -> str:
        cand, ref = metrics.get(f"{attack}.{metric}.candidate"), metrics.get(f"{attack}.{metric}.reference")
        return f"{fmt(cand, 3)} / {fmt(ref, 3)}"

    return f"{attack}: {pair('forget_auc')}", pair(tag)


def _verdict_cell(verification: dict[str, Any] | None) -> str:
    if not verification:
        return "-"
    if "unavailable" in verification:
        return "not verified"
    text = verification["verdict"]
    if "verdicts" in verification:  # over several deletions: each verdict's count
        counts = sorted(verification["verdicts"].items(), key=lambda item: (-item[1], item[0]))
        text = ", ".join(f"{verdict} {n}/{verification['n']}" for verdict, n in counts)
    if verification.get("label"):
        text += f" ({verification['label']})"
    rules = sorted(set(verification.get("deciding_rules", [])))
    if not rules or verification["verdict"] == "pass":
        return text
    shown = ", ".join(rules[:3]) + (f" (+{len(rules) - 3} more)" if len(rules) > 3 else "")
    return f"{text}; deciding rules: {shown}" if "verdicts" in verification else f"{text}: {shown}"


def _methods(section: dict[str, Any] | None, plots: dict[str, Path]) -> str:
    out = ["## Unlearning per workload and method", ""]
    missing = _unavailable(section)
    if missing:
        return "\n".join([*out, missing])
    deletions = section.get("deletions")
    if deletions:  # runs that average over several deletions
        how = (
            f"Each method runs in a worker process of its own on the same {deletions} deletion(s) of "
            f"{section.get('n_subjects', 1)} subject each, a different subject per deletion: signal carriers "
            "in the workload's order for the run's seed, keeping only those for which the calibrated gate "
            "fails the untouched served model on a rule with power (the note under each table counts the "
            "carriers tried and skipped). Wall times pool every timed run of every deletion; the speedup is "
            "taken per deletion against the same deletion's retrain, median (min-max) over the deletions; "
            "the verdict cell counts the gate's verdicts; the other cells are medians over the deletions. "
        )
    else:
        how = (
            "Each method runs in a worker process of its own on the same deletion (1 subject, signal "
            "carriers first). "
        )
    out.append(
        how + "`none` is the untouched served model, which the gate must refuse. Utility cells: mean "
        "loss / accuracy (classifiers) or perplexity (language models) on the forget, retain and held-out "
        "sets. MIA: "
        "the gated attack's forget-vs-held-out AUC and TPR at 1 % FPR, candidate / exact-retrain reference. "
        "Verification time excludes the gate's references (subject halves and seed replicas), trained once "
        "per lineage and reported below the table."
    )
    out += ["", *measured_at(section)]
    for entry in section["workloads"]:
        out += ["", f"### {entry['workload']} ({entry['size']} settings; {_forget_sets(entry)})", ""]
        if "unavailable" in entry:
            out += [f"not measured: {entry['unavailable']}", "", *_subject_choice_note(entry)]
            continue
        out += [
            "| method | exact | wall time (s) | speedup vs retrain | forget | retain | held-out "
            "| MIA AUC cand / ref | TPR@1%FPR cand / ref | gate verdict "
            f"| verification (s, {'median' if entry.get('deletions') else 'n=1'}) "
            "| verification / unlearning | speedup incl. verification |",
            "|---|---|---:|---:|---|---|---|---|---|---|---:|---:|---:|",
        ]
        reference_training = None
        for row in entry["rows"]:
            if "error" in row or "unavailable" in row:
                reason = row.get("error") or row.get("unavailable")
                status = "FAILED" if "error" in row else "unavailable"
                reason = " ".join(reason.split())
                reason = reason[-300:] if "error" in row else reason[:300]  # an exception's last words
                out.append(_row([row["method"], "", f"{status}: {reason}", *[""] * 10]))
                continue
            v = row.get("verification")
            auc, tpr = _mia_cells(v)
            share = (v or {}).get("share_of_unlearning")
            if v and v.get("reference_training_seconds_when_built") is not None:
                reference_training = v["reference_training_seconds_when_built"]
            out.append(
                "| "
                + " | ".join(
                    [
                        row["method"],
                        {True: "yes", False: "no"}.get(row.get("exact"), ""),
                        fmt_spread(row.get("seconds")),
                        fmt_speedup(row.get("speedup")),
                        _utility_cell(row.get("metrics"), "forget"),
                        _utility_cell(row.get("metrics"), "retain"),
                        _utility_cell(row.get("metrics"), "heldout"),
                        auc,
                        tpr,
                        _verdict_cell(v),
                        fmt((v or {}).get("verification_seconds")),
                        f"{share:.0%}" if share is not None else "-",
                        _speedup_number(row.get("speedup_with_verification")),
                    ]
                )
                + " |"
            )
        notes = []
        for row in entry["rows"]:
            sweep = row.get("sweep")
            if sweep:
                notes.append(
                    f"deepobliviate, one subject from each of the {sweep['num_blocks']} subject-aligned "
                    f"blocks: {sweep['mean_speedup_over_subjects']:.1f}x averaged over all training "
                    f"subjects, {sweep.get('throughput_speedup', float('nan')):.1f}x in throughput "
                    "(retrain / mean restart time), against a retrain timed in the same stretch (n=1 each; "
                    "the table's subject sits in one particular block)."
                )
        if any((row.get("verification") or {}).get("candidate") == "extra run" for row in entry["rows"]):
            notes.append(
                "Verification scored a candidate from an extra, untimed run of the same method and seed "
                "(bench.unlearning.run_method does not hand back its candidate)."
            )
        if reference_training is not None:
            notes.append(f"The gate's references, trained once per lineage: {reference_training:.1f} s.")
        retrain = next((r for r in entry["rows"] if r.get("method") == "retrain"), None)
        if entry.get("deletions") and retrain and (retrain.get("seconds") or {}).get("n"):
            notes.append(
                f"retrain over {len(entry['deletions'])} deletion(s) and their repeats: "
                f"{fmt(retrain['seconds']['min'])}-{fmt(retrain['seconds']['max'])} s "
                f"(n={retrain['seconds']['n']})."
            )
        notes += _subject_choice_note(entry)
        if notes:
            out += ["", *notes]
    if "speedup_vs_forget_quality" in plots:
        out += ["", f"![speedup against forget quality]({plots['speedup_vs_forget_quality']})"]
    return "\n".join(out)


def _forget_sets(entry: dict[str, Any]) -> str:
    """The heading's forget sets, e.g. '3 deletion(s) of 1 subject, 8-9 samples each'."""
    deletions = entry.get("deletions")
    if deletions is None:  # a run from before the methods section averaged over deletions
        return f"forget set: {entry['n_subjects']} subject, {entry.get('n_forget')} samples"
    if not deletions:
        return "no deletion measured"
    sizes = sorted(d["n_forget"] for d in deletions if d.get("n_forget") is not None)
    samples = "" if not sizes else f", {sizes[0]}" + (f"-{sizes[-1]}" if sizes[-1] != sizes[0] else "")
    return f"{len(deletions)} deletion(s) of {entry['n_subjects']} subject{samples} samples each"


def _subject_choice_note(entry: dict[str, Any]) -> list[str]:
    choice = entry.get("subject_choice")
    if not choice:
        return []
    skipped = choice.get("skipped", [])
    reasons = ", ".join(f"{s['subject']} ({s['verdict']})" for s in skipped)
    deletions = entry.get("deletions") or []
    subjects = ", ".join(subject for d in deletions for subject in d["subjects"]) or "none"
    skipped_text = (
        f"{len(skipped)} skipped, the gate not failing the untouched model for them on a powered rule: "
        f"{reasons}"
        if skipped
        else "none skipped"
    )
    return [
        f"Forget subjects: {subjects}; {choice['tried']} of the {choice['carriers']} signal carriers tried, "
        + skipped_text
        + (
            f"; {choice['needed']} were wanted."
            if len(deletions) * entry.get("n_subjects", 1) < choice["needed"]
            else "."
        )
    ]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "/").replace("\n", " ") for cell in cells) + " |"


def _speedup_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _scaling(section: dict[str, Any] | None, plots: dict[str, Path]) -> str:
    out = ["## Scaling with the forget set's size", ""]
    missing = _unavailable(section)
    if missing:
        return "\n".join([*out, missing])
    out.append(
        "Forget sets of 1 subject (the table above), 10 and 100 (and 5 and 20 on the language workloads, "
        f"for the gate goal) while their samples stay within {section['max_forget_fraction']:.0%} of the "
        "training set (the cap); nabla_tau also at the cap. Forget gap closed: how far the forget-set loss "
        "moved from the served model's towards the "
        "retrained model's (1 = like retraining, 0 = nothing forgotten). AUC gap: candidate's forget AUC "
        "minus the exact-retrain reference's (0 = like retraining)."
    )
    for entry in section["workloads"]:
        out += [
            "",
            f"### {entry['workload']} ({entry['size']}; {entry['training_subjects']} training subjects, cap "
            f"{entry['cap_subjects']})",
            "",
            "| subjects | method | forget samples (share of training) | wall time (s) | speedup "
            "| forget gap closed | AUC gap | gate verdict |",
            "|---:|---|---|---:|---:|---:|---:|---|",
        ]
        for p in entry["points"]:
            head = f"| {p['n_subjects']} | {p['method']} | {p['n_forget']} ({p['forget_fraction']:.1%})"
            if "unavailable" in p:
                out.append(f"{head} | unavailable: {p['unavailable'][:200]} | | | | |")
                continue
            from bench.plots import auc_gap

            out.append(
                f"{head} | {fmt_spread(p['seconds'])} | {fmt_speedup(p.get('speedup'))} | "
                f"{fmt(p.get('forget_gap_closed'))} | {fmt(auc_gap(p), 3)} "
                f"| {_verdict_cell(p.get('verification'))} |"
            )
    if "time_vs_forget_size" in plots:
        out += ["", f"![time and forget quality against forget-set size]({plots['time_vs_forget_size']})"]
    return "\n".join(out)


def _batching(section: dict[str, Any] | None) -> str:
    out = ["## Batching: requests coalesced into one job beside one job per request", ""]
    missing = _unavailable(section)
    if missing:
        return "\n".join([*out, missing])
    config = section["config"]
    out += [
        f"Time to forget, from a request's acceptance to its completion (a verified version without the "
        f"subject serves), on the production path (`bench/pipeline.py`: API, Postgres, Redis, Celery "
        f"workers) with {section.get('workload', '?')} and method `auto`; {config['requests']} requests, "
        f"batching window {config['window']:g} s, n = 1 run of each scenario"
        + (" (100 requests with --full)." if config["requests"] < 100 else "."),
        "",
        "| scenario | requests | jobs | wall time (s) | time to forget, mean / p50 / max (s) "
        "| requests/min |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for key, label in (
        ("one_request", "one request alone"),
        ("batched", f"{config['requests']} sent together"),
        ("one_at_a_time", f"{config['requests']} one at a time"),
    ):
        r = section.get(key)
        if r:
            times = f"{r['mean_seconds']} / {r['p50_seconds']} / {r['max_seconds']}"
            out.append(
                _row(
                    [
                        label,
                        str(r["requests"]),
                        str(r["jobs"]),
                        fmt(r["wall_seconds"], 1),
                        times,
                        fmt(r.get("requests_per_minute"), 1),
                    ]
                )
            )
    return "\n".join(out)


def _intake_sweep(s: dict[str, Any], plots: dict[str, Path]) -> list[str]:
    """The load sweep: both servers at each number of connections, and the capacity under the SLO."""
    levels, capacity = s.get("levels"), s.get("capacity")
    if not levels or not capacity:
        return []
    out = [
        "",
        "Load sweep, the same runs: at each number of concurrent connections the bare endpoint, then Lethe. "
        "Intake records concurrent requests in shared transactions, so it gains from load the bare endpoint "
        "cannot use; the goal reads capacity as the most requests/s with p99 under "
        f"{capacity['slo_p99_ms']:.0f} ms, against the bare endpoint's most at any level.",
        "",
        "| connections | bare requests/s | bare p99 (ms) | intake requests/s | intake p50 (ms) "
        "| intake p99 (ms) | intake / bare | intake CPU per request (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        out.append(
            f"| {level['connections']} | {fmt_spread(level['ceiling_requests_per_second'], 0)} "
            f"| {fmt_spread(level['ceiling_p99_ms'])} | {fmt_spread(level['intake_requests_per_second'], 0)} "
            f"| {fmt_spread(level['intake_p50_ms'])} | {fmt_spread(level['intake_p99_ms'])} "
            f"| {fmt_spread(level['intake_vs_ceiling'], 3)} "
            f"| {fmt_spread(level['intake_server_cpu_ms_per_request'], 3)} |"
        )
    places = ", ".join(
        f"{c} connections (p99 {fmt(p)} ms)" if c else "no level"
        for c, p in zip(capacity["intake_connections"], capacity["intake_p99_ms"], strict=True)
    )
    out += [
        "",
        f"Capacity with p99 < {capacity['slo_p99_ms']:.0f} ms: "
        f"{fmt_spread(capacity['intake_requests_per_second'], 0)} requests/s, at {places}; ceiling "
        f"{fmt_spread(capacity['ceiling_requests_per_second'], 0)} requests/s; share "
        f"{fmt_spread(capacity['share'], 3)}.",
    ]
    stored, answered = s.get("requests_stored"), s.get("requests_answered")
    if stored and answered:
        out += [
            "",
            f"Requests stored per run {', '.join(f'{n:,}' for n in stored)}; answered 202 within wrk's "
            f"window {', '.join(f'{n:,}' for n in answered)} (the difference: requests still being "
            "answered when a measurement ended, recorded all the same).",
        ]
    if "intake_sweep" in plots:
        out += ["", f"![intake and the bare endpoint against the load]({plots['intake_sweep']})"]
    return out


def _api(section: dict[str, Any] | None, plots: dict[str, Path]) -> str:
    out = ["## API on Postgres", ""]
    missing = _unavailable(section)
    if missing:
        return "\n".join([*out, missing])
    intake = section.get("intake")
    if intake:
        s = intake["summary"]
        cfg = intake["runs"][0]["config"]
        out += [
            f"Load from `wrk` on loopback, {cfg.get('reference_connections', cfg['connections'])} "
            f"connections, {cfg['duration']} s per measurement after a warm-up, one uvicorn worker per "
            f"server; n = {s['intake_vs_ceiling']['n']} runs (`bench/intake.py`). Requests name one of "
            f"{cfg['subjects']:,} registered subjects, so each resolves to samples and an affected model. "
            "The API process also hands the planning tasks to the broker (the outbox), as by default.",
            "",
            "| load | requests/s | p50 (ms) | p99 (ms) | errors | server CPU per request (ms) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, label in (
            ("ceiling", "bare FastAPI POST (ceiling, same run)"),
            ("intake", "POST /v1/deletion-requests"),
            ("polling", "GET /v1/deletion-requests/{id} (status polling)"),
        ):
            out.append(
                f"| {label} | {fmt_spread(s[f'{key}_requests_per_second'], 0)} "
                f"| {fmt_spread(s[f'{key}_p50_ms'])} "
                f"| {fmt_spread(s[f'{key}_p99_ms'])} | {fmt(s[f'{key}_errors']['max'], 0)} "
                f"| {fmt_spread(s.get(f'{key}_server_cpu_ms_per_request'), 3)} |"
            )
        out += ["", f"Intake / ceiling: {fmt_spread(s['intake_vs_ceiling'], 3)}."]
        out += _intake_sweep(s, plots)
    provenance = section.get("provenance")
    if provenance:
        s = provenance["summary"]
        run0 = provenance["runs"][0]
        loads = "; ".join(
            f"{r['name']}: {r['samples_per_second']:,} samples/s (batch p50 {r['batch_p50_ms']} ms)"
            for r in run0["results"]
        )
        out += [
            "",
            f"Bulk provenance (`bench/provenance.py`, {run0['config']['batch']:,} samples per request, "
            f"{run0['config']['concurrency']} in flight, n = {s['samples_per_second']['n']} runs):",
            "",
            f"- registered: {fmt_spread(s['samples_per_second'], 0)} samples/s wall clock "
            f"(first run: {loads})",
            f"- CPU per sample, API + Postgres: {fmt_spread(s['cpu_us_per_sample'], 1)} us -> "
            f"{fmt_spread(s['cpu_bound_samples_per_second'], 0)} samples/s with two free cores",
            f"- subject lookup GET /v1/subjects/{{id}} with {s['tenant_samples']:,} samples in the tenant "
            f"({s['lookups_per_run']} lookups per run): p50 {fmt_spread(s['lookup_p50_ms'])} ms, p99 "
            f"{fmt_spread(s['lookup_p99_ms'])} ms"
            + (
                ""
                if s["tenant_samples"] >= 1_000_000
                else " (the 1,000,000-sample figure is measured by --full)"
            ),
        ]
    return "\n".join(out)


def _memory(section: dict[str, Any] | None) -> str:
    out = ["## Peak memory of a worker per method", ""]
    if _unavailable(section):
        return "\n".join([*out, _unavailable(section) or ""])
    out += [
        "Each method in a process of its own; peak resident set size from the kernel (`ru_maxrss`) at each "
        "stage: after imports, with workload and model loaded, after unlearning, and at exit (verification "
        "included).",
        "",
        "| workload | method | imports (MB) | model loaded (MB) | after unlearning (MB) "
        "| at exit, with verification (MB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for entry in section["workloads"]:
        for row in entry.get("rows", []):
            m = row.get("memory")
            if not m:
                continue
            out.append(
                f"| {entry['workload']} | {row['method']} | {fmt(m.get('imports_mb'), 0)} "
                f"| {fmt(m.get('loaded_mb'), 0)} "
                f"| {fmt(m.get('after_unlearning_mb'), 0)} | {fmt(m.get('peak_rss_mb'), 0)} |"
            )
    return "\n".join(out)


def _run_notes(results: dict[str, Any]) -> str:
    timings = ", ".join(f"{k} {v / 60:.1f} min" for k, v in results.get("section_seconds", {}).items())
    s = results["settings"]
    return "\n".join(
        [
            "## About this run",
            "",
            f"- time per section: {timings}",
            f"- repeats: up to {s['repeats']} per method while they take under "
            f"{s['repeat_budget_seconds']:.0f} s "
            f"(n in each cell); scaling points up to {s['scaling_repeats']}",
            "- the trained models and the LiRA reference models come from the disk cache (LETHE_CACHE_DIR) "
            "and are "
            "built on first use, outside every timing",
        ]
    )
