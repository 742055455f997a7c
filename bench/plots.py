"""The benchmark's figures (matplotlib, Agg backend): PNG files next to docs/benchmarks.md.

- speedup_vs_forget_quality.png: per workload, each method's speedup over retraining (x, log) against its
  forget quality (y), one point per forget-set size, the marker telling the gate's verdict;
- time_vs_forget_size.png: per workload, wall time (top) and forget quality (bottom) against the number of
  subjects forgotten, retraining included, bars from the fastest to the slowest repeat;
- intake_sweep.png: requests/s (left) and p99 latency (right) of POST /v1/deletion-requests and of the bare
  FastAPI endpoint against the number of concurrent connections, with the latency goal.

Forget quality is the gated attack's forget AUC minus the exact-retrain reference's (0 = like retraining,
above = remembers, below = over-unlearned) when the gate ran; otherwise how far the forget-set loss moved
from the served model's towards the retrained model's (1 = like retraining).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

VERDICT_MARKERS = {"pass": "o", "fail": "X", "inconclusive": "^"}
GOAL_SPEEDUP = 20.0


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_axis(axis: Any, ticks: Sequence[float] = ()) -> None:
    """Log scale labelled 1, 2, 5, 10 rather than 10^0, 10^1 (or exactly at `ticks`)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if ticks:
        axis.set_major_locator(FixedLocator(sorted(set(ticks))))
        axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:e}"[0] in "25" else ""))


def points(results: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every measured (workload, method, forget-set size): methods section rows and scaling points."""
    sections = results.get("sections", {})
    for entry in sections.get("methods", {}).get("workloads", []):
        for row in entry.get("rows", []):
            if "seconds" in row and row.get("seconds", {}).get("n"):
                yield {**row, "workload": entry["workload"], "n_subjects": entry["n_subjects"]}
    for entry in sections.get("scaling", {}).get("workloads", []):
        for point in entry.get("points", []):
            if "seconds" in point:
                yield point


def auc_gap(point: dict[str, Any]) -> float | None:
    """Candidate's forget AUC minus the exact-retrain reference's under the gated attack."""
    verification = point.get("verification") or {}
    attack, metrics = verification.get("primary_attack"), verification.get("metrics", {})
    candidate, reference = (
        metrics.get(f"{attack}.forget_auc.candidate"),
        metrics.get(f"{attack}.forget_auc.reference"),
    )
    if candidate is None or reference is None:
        return None
    return candidate - reference


def quality_measure(results: dict[str, Any]) -> tuple[str, str]:
    """Which forget quality the figures show: the gate's AUC gap when any point was verified."""
    if any(auc_gap(p) is not None for p in points(results)):
        return "auc_gap", "forget AUC minus retrain reference's\n(0 = like retraining)"
    return (
        "forget_gap_closed",
        "forget gap closed, share of the forget-loss\ngap from served to retrain (1 = like retraining)",
    )


def quality(point: dict[str, Any], measure: str) -> float | None:
    return auc_gap(point) if measure == "auc_gap" else point.get("forget_gap_closed")


def _workloads(results: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for p in points(results):
        if p["workload"] not in seen:
            seen.append(p["workload"])
    return seen


def _method_colors(results: dict[str, Any]) -> dict[str, Any]:
    plt = _pyplot()
    methods = sorted({p["method"] for p in points(results)} - {"retrain"})
    cmap = plt.get_cmap("tab10")
    return {"retrain": "black", **{m: cmap(i % 10) for i, m in enumerate(methods)}}


def speedup_vs_quality(results: dict[str, Any], path: Path) -> bool:
    workloads = _workloads(results)
    if not workloads:
        return False
    plt = _pyplot()
    measure, label = quality_measure(results)
    colors = _method_colors(results)
    fig, axes = plt.subplots(1, len(workloads), figsize=(max(5.2 * len(workloads), 7.5), 5), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        for p in points(results):
            y, speedup = quality(p, measure), p.get("speedup")
            if p["workload"] != workload or p["method"] == "retrain" or y is None or not speedup:
                continue
            verdict = (p.get("verification") or {}).get("verdict")
            ax.scatter(
                speedup["median"],
                y,
                color=colors[p["method"]],
                marker=VERDICT_MARKERS.get(verdict, "s"),
                s=55,
                edgecolor="black",
                linewidth=0.5,
            )
            ax.annotate(
                str(p["n_subjects"]),
                (speedup["median"], y),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=7,
            )
        ax.axhline(0 if measure == "auc_gap" else 1, color="gray", linewidth=0.8, linestyle="--")
        ax.axvline(1, color="gray", linewidth=0.8)
        ax.axvline(GOAL_SPEEDUP, color="tab:red", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
        ax.set_title(workload)
        ax.set_xlabel("speedup over retraining (x, log; red: 20x goal)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(label)
    handles = [
        plt.Line2D([], [], color=c, marker="o", linestyle="", label=m)
        for m, c in colors.items()
        if m != "retrain"
    ] + [
        plt.Line2D([], [], color="gray", marker=mk, linestyle="", label=f"gate: {v}")
        for v, mk in VERDICT_MARKERS.items()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Speedup against forget quality (numbers: subjects forgotten)", fontsize=11)
    fig.tight_layout(rect=(0, 0.14, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def time_vs_size(results: dict[str, Any], path: Path) -> bool:
    workloads = _workloads(results)
    if not workloads:
        return False
    plt = _pyplot()
    measure, label = quality_measure(results)
    colors = _method_colors(results)
    fig, axes = plt.subplots(
        2, len(workloads), figsize=(5.2 * len(workloads), 7.6), squeeze=False, sharex="col"
    )
    for column, workload in enumerate(workloads):
        top, bottom = axes[0][column], axes[1][column]
        by_method: dict[str, list[dict[str, Any]]] = {}
        for p in points(results):
            if p["workload"] == workload:
                by_method.setdefault(p["method"], []).append(p)
        for method, series in sorted(by_method.items()):
            series = sorted(series, key=lambda p: p["n_subjects"])
            xs = [p["n_subjects"] for p in series]
            med = [p["seconds"]["median"] for p in series]
            low = [p["seconds"]["median"] - p["seconds"]["min"] for p in series]
            high = [p["seconds"]["max"] - p["seconds"]["median"] for p in series]
            style = {"color": colors[method], "marker": "o", "linewidth": 2.2 if method == "retrain" else 1.2}
            top.errorbar(xs, med, yerr=[low, high], capsize=3, label=method, **style)
            qs = [(x, quality(p, measure)) for x, p in zip(xs, series, strict=True) if method != "retrain"]
            qs = [(x, q) for x, q in qs if q is not None]
            if qs:
                bottom.plot([x for x, _ in qs], [q for _, q in qs], **style)
        top.set_yscale("log")
        _plain_log_axis(top.yaxis)
        top.set_title(workload)
        top.grid(alpha=0.3)
        bottom.axhline(0 if measure == "auc_gap" else 1, color="gray", linewidth=0.8, linestyle="--")
        bottom.set_xscale("log")
        sizes = [p["n_subjects"] for p in points(results) if p["workload"] == workload]
        _plain_log_axis(bottom.xaxis, sizes)
        bottom.set_xlabel("subjects forgotten (log)")
        bottom.grid(alpha=0.3)
    axes[0][0].set_ylabel("wall time (s, log)")
    axes[1][0].set_ylabel(label)
    fig.suptitle("Time and forget quality against the forget set's size", fontsize=11)
    handles = [plt.Line2D([], [], color=c, marker="o", label=m) for m, c in colors.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def intake_sweep(results: dict[str, Any], path: Path) -> bool:
    intake = results.get("sections", {}).get("api", {}).get("intake", {})
    summary = intake.get("summary", {})
    levels, capacity = summary.get("levels"), summary.get("capacity")
    if not levels or not capacity:
        return False
    plt = _pyplot()
    xs = [level["connections"] for level in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.4, 4.2))
    for key, label, color in (
        ("ceiling", "bare FastAPI POST", "tab:gray"),
        ("intake", "Lethe intake", "tab:blue"),
    ):
        for axis, field in ((left, "requests_per_second"), (right, "p99_ms")):
            spreads = [level[f"{key}_{field}"] for level in levels]
            med = [sp["median"] for sp in spreads]
            err = [
                [m - sp["min"] for m, sp in zip(med, spreads, strict=True)],
                [sp["max"] - m for m, sp in zip(med, spreads, strict=True)],
            ]
            axis.errorbar(xs, med, yerr=err, capsize=3, marker="o", color=color, label=label)
    quarter = [0.25 * level["ceiling_requests_per_second"]["median"] for level in levels]
    left.plot(xs, quarter, color="tab:gray", linestyle=":", label="25 % of the bare endpoint")
    right.axhline(capacity["slo_p99_ms"], color="tab:red", linestyle="--", linewidth=1, label="p99 goal")
    for axis in (left, right):
        axis.set_xscale("log")
        _plain_log_axis(axis.xaxis, xs)
        axis.set_xlabel("concurrent connections (log)")
        axis.grid(alpha=0.3)
    left.set_ylim(bottom=0)
    left.set_ylabel("requests/s")
    right.set_ylabel("p99 latency (ms)")
    right.set_yscale("log")
    _plain_log_axis(right.yaxis)
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(
        "Intake against the load, beside the bare endpoint (one run per level and server)", fontsize=11
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


PLOTS = {
    "speedup_vs_forget_quality": speedup_vs_quality,
    "time_vs_forget_size": time_vs_size,
    "intake_sweep": intake_sweep,
}


def write_all(results: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Every figure that has data; answers {name: path}."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, draw in PLOTS.items():
        path = directory / f"{name}.png"
        if draw(results, path):
            written[name] = path
    return written
