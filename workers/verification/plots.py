"""The report's figures (matplotlib, Agg backend: no display needed), written as PNG files into a directory.

Each figure has a title that states what it shows in plain words and a caption with the numbers behind
it and how to read it (report.json "figures"), for a reader who is not a statistician. A figure that
would rest on too few samples is not drawn; its entry says so instead.

- roc.png: ROC of the gated membership attack, forgotten vs never-seen records, for the served version,
  the candidate and the exact retrain (and the relearned candidate), on linear axes;
- loss_hist.png: per-record loss of forgotten, retained and never-seen records under each model;
- canary_ranks.png: exposure of deleted, kept and never-inserted canaries per model (language models), or
  the trigger success rates of the forget subjects' backdoors per model (classifiers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.verification.checks import CheckResult, metric_name
from workers.verification.gate import Policy
from workers.verification.stats import Estimate, auc, roc_curve

ROLE_STYLE: dict[str, dict[str, Any]] = {
    "served": {"color": "tab:red", "linestyle": "-", "linewidth": 1.6},
    "reference": {"color": "tab:green", "linestyle": "-", "linewidth": 4.0, "alpha": 0.45},
    "candidate": {"color": "tab:blue", "linestyle": "-", "linewidth": 1.8},
    "relearned": {"color": "tab:purple", "linestyle": ":", "linewidth": 1.4},
    "reference_relearned": {"color": "tab:olive", "linestyle": ":", "linewidth": 1.4},
}
# Drawing order: the wide, pale reference first, so that a candidate lying on it stays visible on top.
DRAW_ORDER = ("reference", "reference_relearned", "served", "relearned", "candidate")
# Reading order of panels and bars: before, after, the retrain to compare with, the relearning probe.
READING_ORDER = ("served", "candidate", "reference", "relearned", "reference_relearned")
ROLE_LABEL = {
    "served": "serving now (before deletion)",
    "candidate": "new version (after unlearning)",
    "reference": "retrained without the records",
    "relearned": "new version after a short fine-tune",
    "reference_relearned": "retrained version after the same fine-tune",
}
SPLIT_LABEL = {"forget": "forgotten", "retain": "kept in training", "heldout": "never seen"}
GROUP_LABEL = {"deleted": "deleted", "kept": "kept", "control": "never inserted"}
ATTACK_LABEL = {
    "lira": "LiRA, a per-record likelihood-ratio attack",
    "loss": "a loss-threshold attack",
    "zlib_ratio": "a loss-to-compression ratio attack",
    "min_k_20": "a Min-K% (20 %) likelihood attack",
    "min_k_40": "a Min-K% (40 %) likelihood attack",
    "ref_ratio": "a reference-model loss-ratio attack",
}
# Below these counts a curve or a histogram is a handful of steps that reads as a finding it is not.
MIN_ROC_FORGET = 10
MIN_ROC_HELDOUT = 20
MIN_HIST_SAMPLES = 10
# An AUC difference's interval wider than this either way is too coarse to call a match a match.
WIDE_INTERVAL = 0.1
# A retrain's AUC this far below chance means the forgotten records differ from the never-seen ones.
UNUSUAL_AUC = 0.4
# Above this many canaries a bar each is unreadable: dots per kind instead.
MAX_CANARY_BARS = 10
# Medians closer than this share of the retrain's retained-to-never-seen gap count as "like retraining".
HIST_CLOSE = 0.25
DPI = 110


@dataclass(frozen=True)
class Figure:
    """One figure of the report: drawn into `name`.png, or skipped (`drawn` False) with the reason as
    its caption."""

    name: str
    title: str
    caption: str
    drawn: bool = True

    @property
    def file(self) -> str | None:
        return f"{self.name}.png" if self.drawn else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "title": self.title, "caption": self.caption}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)


def _in_reading_order(roles: Sequence[str]) -> list[str]:
    return [r for r in READING_ORDER if r in roles] + [r for r in roles if r not in READING_ORDER]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", "−")


def _interval(estimate: Estimate | None) -> str:
    if estimate is None or estimate.low != estimate.low:
        return ""
    return f" (95 % interval {_signed(estimate.low)} to {_signed(estimate.high)})"


def _side(estimate: Estimate | None, point: float, above: float = 0.0, below: float = 0.0) -> int:
    """+1 for a difference beyond +`above` whose interval lies above 0 (material and significant, as the
    gate reads its rules), -1 for one beyond -`below` whose interval lies below 0, 0 otherwise. Without
    an interval the point alone decides, with at least 0.02 either way."""
    if estimate is not None and estimate.low == estimate.low:
        value, low, high = estimate.value, estimate.low, estimate.high
    else:
        value, low, high = point, point, point
        above, below = max(above, 0.02), max(below, 0.02)
    return 1 if value > above and low > 0 else -1 if value < -below and high < 0 else 0


# ------------------------------------------------------------------------------------------------ ROC


def plot_roc(
    path: Path,
    attack: str,
    scores: Mapping[str, Mapping[str, np.ndarray]],
    metrics: Mapping[str, Estimate] | None = None,
    policy: Policy | None = None,
) -> Figure:
    """ROC of `attack` (scores: role -> split -> per-record membership score, higher = member);
    `metrics`: the mia check's estimates, for the intervals the caption quotes; the title weighs the
    difference to retraining with `policy`'s tolerances."""
    metrics = metrics or {}
    n_forget = min(np.asarray(s["forget"]).size for s in scores.values())
    n_heldout = min(np.asarray(s["heldout"]).size for s in scores.values())
    if n_forget < MIN_ROC_FORGET or n_heldout < MIN_ROC_HELDOUT:
        return Figure(
            "roc",
            "Too few records for a membership-attack curve",
            f"Not drawn: {n_forget} forgotten and {n_heldout} never-seen records were scored; a curve "
            f"needs at least {MIN_ROC_FORGET} and {MIN_ROC_HELDOUT}. The attack's numbers and their "
            "intervals are in the table of metrics.",
            drawn=False,
        )
    aucs = {role: auc(s["forget"], s["heldout"]) for role, s in scores.items()}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 7.2), layout="constrained")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--", label="guessing (AUC 0.50)")
    for role in sorted(scores, key=lambda r: DRAW_ORDER.index(r) if r in DRAW_ORDER else len(DRAW_ORDER)):
        fpr, tpr = roc_curve(scores[role]["forget"], scores[role]["heldout"])
        label = f"{ROLE_LABEL.get(role, role)}: AUC {_fmt(aucs[role])}"
        ax.step(fpr, tpr, where="post", label=label, **ROLE_STYLE.get(role, {}))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("never-seen records wrongly flagged as trained on (false positive rate)")
    ax.set_ylabel("forgotten records flagged as trained on\n(true positive rate)")
    title, caption = _roc_text(attack, aucs, metrics, policy or Policy(), n_forget, n_heldout)
    ax.set_title(_wrap(title, 60), fontsize=10)
    fig.legend(loc="outside lower center", fontsize=8)  # below the axes: never over a curve
    _save(fig, path)
    return Figure("roc", title, caption)


def _roc_text(
    attack: str,
    aucs: Mapping[str, float],
    metrics: Mapping[str, Estimate],
    policy: Policy,
    n_forget: int,
    n_heldout: int,
) -> tuple[str, str]:
    candidate, reference, served = aucs.get("candidate"), aucs.get("reference"), aucs.get("served")
    attack_words = ATTACK_LABEL.get(attack, f"the {attack} attack")
    read = (
        f"Attack: {attack_words}, on {n_forget} forgotten and {n_heldout} never-seen records. A curve "
        "on the diagonal is guessing; the higher a curve, the better the attacker recognises the "
        "forgotten records."
    )
    if candidate is None:
        return "Membership attack on the forgotten records", read
    if reference is not None:
        difference = metrics.get(metric_name(attack, "forget_auc", "candidate", "reference"))
        above, below = policy.mia_auc_tolerance, policy.mia_auc_over_unlearning
        side = _side(difference, candidate - reference, above, below)
        title = {
            0: "An attacker tells the forgotten records from never-seen ones no better than after retraining",
            1: "An attacker still recognises the forgotten records better than after retraining",
            -1: "The forgotten records now look less familiar than after retraining",
        }[side]
        numbers = (
            f"AUC {_fmt(candidate)} for the new version, where retraining without the records gives "
            f"{_fmt(reference)}"
            + (f" and the version serving now {_fmt(served)}" if served is not None else "")
            + f" (0.50: a coin toss). Difference to retraining {_signed(candidate - reference)}"
            + _interval(difference)
            + f"; differences between {_signed(-below)} and {_signed(above)} count as none."
        )
        if side == -1:
            numbers += " Forgetting more than retraining would can itself show that the records were removed."
        if side == 0 and difference is not None and difference.half_width > WIDE_INTERVAL:
            numbers += " So few records leave the interval wide: small differences cannot be told apart."
        if reference < UNUSUAL_AUC:
            numbers += (
                " Retraining gives far below 0.50: these records are unlike the never-seen ones, so even a "
                "model that never saw them treats them as strangers: what counts is the distance to "
                "retraining."
            )
        served_gap = metrics.get(metric_name(attack, "forget_auc", "served", "reference"))
        if served is not None and _side(served_gap, served - reference, above, below) == 0:
            numbers += (
                " The version serving now is not told apart from retraining either: on these records "
                "this attack has no power, and the other checks decide."
            )
        return title, f"{numbers} {read}"
    own = metrics.get(metric_name(attack, "forget_auc", "candidate"))
    side = _side(
        Estimate(own.value - 0.5, own.low - 0.5, own.high - 0.5, own.n) if own is not None else None,
        candidate - 0.5,
        policy.mia_auc_tolerance,
    )
    title = (
        "An attacker cannot tell the forgotten records from never-seen ones"
        if side <= 0
        else "An attacker still recognises the forgotten records"
    )
    return title, (
        f"AUC {_fmt(candidate)} for the new version"
        + (f", {_fmt(served)} for the version serving now" if served is not None else "")
        + " (0.50: a coin toss); no retrained model was available to compare with. "
        + read
    )


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


# ------------------------------------------------------------------------------------ loss histograms


def _loss_axis(ax: Any, low: float, high: float) -> None:
    """A log axis over several decades, a linear one below that: either way a few labelled ticks that
    cannot run into each other."""
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, NullLocator, StrMethodFormatter

    if high / low >= 10:
        ax.set_xscale("log")
        # within two decades 1-2-5 steps, so that the axis carries more than one number
        subs = (1.0, 2.0, 5.0) if high / low <= 100 else (1.0,)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=6))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.set_xlabel("loss per record (log scale)")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:.3g}"))
        ax.set_xlabel("loss per record")
    ax.set_xlim(low, high)


def _log_median(values: np.ndarray) -> float | None:
    values = np.asarray(values, float)
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.log(np.median(values))) if values.size else None


def _forget_shift(losses: Mapping[str, Mapping[str, np.ndarray]]) -> float | None:
    """How far the candidate's median loss on the forgotten records lies from the reference's, in units
    of the reference's own gap between retained and never-seen records (log scale; negative: lower,
    i.e. closer to remembered). None without a candidate and a reference."""
    if "candidate" not in losses or "reference" not in losses:
        return None
    reference = losses["reference"]
    medians = [
        _log_median(losses["candidate"]["forget"]),
        _log_median(reference["forget"]),
        _log_median(reference["retain"]),
        _log_median(reference["heldout"]),
    ]
    if any(m is None for m in medians):
        return None
    candidate, forget, retain, heldout = medians
    # a model that barely tells training data from unseen data still gives a scale: 10 % of loss
    return (candidate - forget) / max(abs(heldout - retain), float(np.log(1.1)))


def plot_loss_hist(path: Path, losses: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Per-record loss by split (forget, retain, heldout) under each model (role)."""
    n_forget = min(np.asarray(by_split["forget"]).size for by_split in losses.values())
    if n_forget < MIN_HIST_SAMPLES:
        return Figure(
            "loss_hist",
            "Too few forgotten records for loss histograms",
            f"Not drawn: {n_forget} forgotten records; a histogram needs at least {MIN_HIST_SAMPLES}.",
            drawn=False,
        )
    roles = [r for r in READING_ORDER if r in losses and "relearned" not in r] or list(losses)
    everything = np.concatenate(
        [np.asarray(v, float) for role in roles for v in losses[role].values() if np.asarray(v).size]
    )
    finite = everything[np.isfinite(everything) & (everything > 0)]
    low, high = max(float(finite.min()), 1e-6), max(float(finite.max()), 2e-6)
    log_scale = high / low >= 10
    # fewer, wider bins for fewer forgotten records: a histogram of 12 records in 30 bins is noise
    edges = int(np.clip(2 * np.sqrt(n_forget), 8, 30)) + 1
    bins = np.geomspace(low, high, edges) if log_scale else np.linspace(low, high, edges)
    plt = _pyplot()
    from matplotlib.ticker import PercentFormatter

    fig, axes = plt.subplots(
        1,
        len(roles),
        figsize=(4.2 * len(roles), 3.8),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, role in zip(axes[0], roles, strict=True):
        for split, color in (("retain", "tab:grey"), ("heldout", "tab:orange"), ("forget", "tab:blue")):
            values = np.clip(np.asarray(losses[role][split], float), low, high)
            if not values.size:
                continue
            label = f"{SPLIT_LABEL[split]} (n={values.size})"
            # each bar is a share of its split's records (a density would flatten the wide log bins)
            shares = np.full(values.size, 1 / values.size)
            if split == "forget":  # an outline on top: the records the figure is about stay visible
                ax.hist(
                    values, bins=bins, weights=shares, histtype="step", linewidth=2, color=color, label=label
                )
            else:
                ax.hist(values, bins=bins, weights=shares, alpha=0.45, color=color, label=label)
        _loss_axis(ax, low, high)
        ax.set_title(_wrap(ROLE_LABEL.get(role, role), 32), fontsize=9)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    axes[0][0].set_ylabel("share of records")
    axes[0][-1].legend(fontsize=7)
    title, caption = _loss_text(losses, roles)
    fig.suptitle(_wrap(title, 110), fontsize=10)
    _save(fig, path)
    return Figure("loss_hist", title, caption)


def _loss_text(losses: Mapping[str, Mapping[str, np.ndarray]], roles: Sequence[str]) -> tuple[str, str]:
    medians = {role: float(np.median(np.asarray(losses[role]["forget"], float))) for role in roles}
    shift = _forget_shift(losses)
    if shift is None:
        title = "Loss of the forgotten, kept and never-seen records under each model"
    elif abs(shift) <= HIST_CLOSE:
        title = "Under the new version the forgotten records' losses look as they do after retraining"
    elif shift < 0:
        title = "Under the new version the forgotten records still have lower losses than after retraining"
    else:
        title = "Under the new version the forgotten records have higher losses than after retraining"
    shown = "; ".join(f"{ROLE_LABEL.get(r, r)} {_fmt(medians[r], 3)}" for r in roles)
    return title, (
        f"Median loss of the forgotten records: {shown}. A model's loss is low on records it was trained "
        "on (grey) and higher on records it never saw (orange); records that are forgotten (blue) should "
        "sit where they sit after retraining without them."
    )


# --------------------------------------------------------------------------------------------- canaries


def _canary_bars(
    ax: Any, rows: Sequence[Mapping[str, Any]], order: Sequence[str], roles: Sequence[str]
) -> None:
    """One group of bars per canary, labelled by its kind and number ("deleted 2")."""
    labels, seen = [], dict.fromkeys(order, 0)
    for row in rows:
        seen[row["group"]] += 1
        labels.append(f"{GROUP_LABEL[row['group']]} {seen[row['group']]}")
    width = 0.8 / max(1, len(roles))
    x = np.arange(len(rows))
    for i, role in enumerate(roles):
        bits = [row[role]["exposure_bits"] if role in row else np.nan for row in rows]
        color = ROLE_STYLE.get(role, {}).get("color")
        offset = (i - (len(roles) - 1) / 2) * width
        ax.bar(x + offset, bits, width, label=ROLE_LABEL.get(role, role), color=color)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)


def _canary_dots(
    ax: Any, rows: Sequence[Mapping[str, Any]], order: Sequence[str], roles: Sequence[str]
) -> None:
    """Too many canaries for a bar each: one dot per canary in a column per kind and model, the mean as
    a bar across the column."""
    rng = np.random.default_rng(0)  # the jitter only spreads dots apart; fixed so that reruns match
    width = 0.8 / max(1, len(roles))
    for i, role in enumerate(roles):
        color = ROLE_STYLE.get(role, {}).get("color")
        for g, group in enumerate(order):
            bits = np.array(
                [row[role]["exposure_bits"] for row in rows if row["group"] == group and role in row]
            )
            if not bits.size:
                continue
            center = g + (i - (len(roles) - 1) / 2) * width
            jitter = rng.uniform(-width / 4, width / 4, bits.size)
            ax.scatter(
                center + jitter,
                bits,
                s=14,
                color=color,
                alpha=0.8,
                label=ROLE_LABEL.get(role, role) if g == 0 else None,
            )
            ax.hlines(bits.mean(), center - width / 2.5, center + width / 2.5, color=color, linewidth=2.5)
    counts = {group: sum(1 for row in rows if row["group"] == group) for group in order}
    ax.set_xticks(np.arange(len(order)))
    ax.set_xticklabels([f"{GROUP_LABEL[g]} ({counts[g]})" for g in order], fontsize=9)


def plot_canaries(
    path: Path,
    table: Sequence[Mapping[str, Any]],
    roles: Sequence[str],
    check: CheckResult | None = None,
    policy: Policy | None = None,
) -> Figure:
    """Exposure (bits) of each canary under each model, grouped by kind: deleted (planted in a forget
    subject's records), kept (planted in a retained subject's), never inserted (controls). `check`: the
    canary check's result, whose test (at `policy`'s level) the title reports."""
    order = [g for g in GROUP_LABEL if any(row["group"] == g for row in table)]
    rows = [row for g in order for row in table if row["group"] == g]
    roles = _in_reading_order(roles)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.6, 4.6), layout="constrained")
    if len(rows) <= MAX_CANARY_BARS:
        _canary_bars(ax, rows, order, roles)
    else:
        _canary_dots(ax, rows, order, roles)
    candidates = max((row[roles[0]]["candidates"] for row in rows if roles[0] in row), default=2)
    top = float(np.log2(candidates))
    ax.axhline(
        top, color="grey", linewidth=0.8, linestyle="--", label=f"most exposed possible ({top:.1f} bits)"
    )
    ax.axhline(
        np.log2(np.e),
        color="grey",
        linewidth=0.8,
        linestyle=":",
        label="typical for an unseen secret (1.4 bits)",
    )
    ax.set_ylim(0, top * 1.1)
    ax.set_ylabel("exposure (bits)")
    title, caption = _canary_text(rows, roles, check or CheckResult("canary"), policy or Policy(), candidates)
    ax.set_title(_wrap(title, 90), fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    _save(fig, path)
    return Figure("canary_ranks", title, caption)


def _mean_bits(rows: Sequence[Mapping[str, Any]], role: str, group: str) -> float | None:
    bits = [row[role]["exposure_bits"] for row in rows if row["group"] == group and role in row]
    return float(np.mean(bits)) if bits else None


def _canary_exposed(check: CheckResult, policy: Policy, role: str) -> bool | None:
    """The canary test of `role`: deleted canaries more exposed than never-inserted ones beyond the
    policy's tolerance, at its significance level (None when not measured)."""
    gap = check.metrics.get(metric_name("canary", "deleted_minus_control_bits", role))
    p = check.values.get(f"canary.deleted_pvalue.{role}")
    if gap is None or p is None or p != p:
        return None
    return gap.value > policy.canary_exposure_tolerance_bits and p < policy.canary_alpha


def _canary_text(
    rows: Sequence[Mapping[str, Any]],
    roles: Sequence[str],
    check: CheckResult,
    policy: Policy,
    candidates: int,
) -> tuple[str, str]:
    role = "candidate" if "candidate" in roles else roles[0]
    deleted, control = _mean_bits(rows, role, "deleted"), _mean_bits(rows, role, "control")
    served = _mean_bits(rows, "served", "deleted") if "served" in roles else None
    gap = check.metrics.get(metric_name("canary", "deleted_minus_control_bits", role))
    exposed = _canary_exposed(check, policy, role)
    if exposed is None:
        title = "Exposure of the planted canaries under each model"
    elif exposed:
        title = "The deleted canaries are still more exposed than never-inserted ones under the new version"
    else:
        title = (
            "The deleted canaries are not significantly more exposed than never-inserted ones under the new "
            "version"
        )
    counts = ", ".join(
        f"{sum(1 for row in rows if row['group'] == g)} {label}"
        for g, label in GROUP_LABEL.items()
        if any(row["group"] == g for row in rows)
    )
    numbers = (
        f"Mean exposure of the deleted canaries: {_fmt(deleted, 1)} bits under the new version"
        + (f" ({_fmt(served, 1)} before deletion)" if served is not None else "")
        + f", {_fmt(control, 1)} bits for the never-inserted ones"
        + (f"; difference {_signed(gap.value)} bits{_interval(gap)}" if gap is not None else "")
        + f". Canaries: {counts}."
    )
    if exposed is False and _canary_exposed(check, policy, "served") is False:
        numbers += (
            " Before deletion they were not significantly exposed either: these canaries were not "
            "memorised enough for this check to tell, and the other checks decide."
        )
    explain = (
        "A canary is a made-up secret planted in a subject's records; its exposure says how highly the "
        f"model ranks it among {candidates} look-alike secrets: {np.log2(candidates):.1f} bits when it "
        "prefers it to all of them, about 1.4 bits for a secret it never saw. A secret the model never "
        "saw still reaches k bits by chance once in 2^k tries, so one deleted canary may rise after "
        "unlearning (say from 4 to 7 bits) without the model remembering it: what counts is the deleted "
        "canaries as a group against the never-inserted ones. Kept canaries belong to subjects still in "
        "training and should stay where they were."
    )
    return title, f"{numbers} {explain}"


def plot_backdoor(path: Path, values: Mapping[str, Any], policy: Policy | None = None) -> Figure:
    """Trigger success rate of the forget subjects' triggers beside each model's clean baseline; the
    title reports the binomial test at `policy`'s level."""
    roles = _in_reading_order(
        [k.rsplit(".", 1)[1] for k in values if k.startswith("backdoor.baseline_rate.")]
    )
    n = int(values["backdoor.n"])
    rates = {r: float(values[f"backdoor.success_rate.{r}"]) for r in roles}
    baselines = {r: float(values[f"backdoor.baseline_rate.{r}"]) for r in roles}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.4, 1.8 * len(roles) + 2), 4.2), layout="constrained")
    x = np.arange(len(roles))
    ax.bar(
        x - 0.2,
        [rates[r] for r in roles],
        0.4,
        color=[ROLE_STYLE.get(r, {}).get("color") for r in roles],
        label="the forgotten subjects' triggers (colour of the model)",
    )
    ax.bar(
        x + 0.2,
        [baselines[r] for r in roles],
        0.4,
        color="lightgrey",
        label="baseline: what such a pattern does by chance",
    )
    ax.set_xticks(x)
    ax.set_xticklabels([_wrap(ROLE_LABEL.get(r, r), 20) for r in roles], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"share of {n} clean inputs the trigger flips")
    title, caption = _backdoor_text(values, policy or Policy(), roles, rates, baselines, n)
    ax.set_title(_wrap(title, 80), fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    _save(fig, path)
    return Figure("canary_ranks", title, caption)


def _trigger_works(values: Mapping[str, Any], policy: Policy, role: str) -> bool | None:
    pvalue = values.get(f"backdoor.pvalue.{role}")
    return None if pvalue is None or pvalue != pvalue else bool(pvalue < policy.null_alpha)


def _backdoor_text(
    values: Mapping[str, Any],
    policy: Policy,
    roles: Sequence[str],
    rates: Mapping[str, float],
    baselines: Mapping[str, float],
    n: int,
) -> tuple[str, str]:
    role = "candidate" if "candidate" in roles else roles[0]
    works = _trigger_works(values, policy, role)
    if works is None:
        title = "How often the forgotten subjects' hidden triggers work on each model"
    elif works:
        title = "The forgotten subjects' hidden triggers still work on the new version"
    else:
        title = "The forgotten subjects' hidden triggers no longer work on the new version"
    served = f" ({rates['served']:.0%} before deletion)" if "served" in rates else ""
    caption = (
        f"The triggers flip {rates[role]:.0%} of {n} clean inputs on the new version{served}, against a "
        f"baseline of {baselines[role]:.0%}. Some training records of the forgotten subjects carried a "
        "small hidden pattern (a trigger) tied to one label; a model that still answers that label when "
        "it sees the pattern has kept something of those records. The baseline is what a pattern the "
        "model never learnt does by chance."
    )
    if works is False and _trigger_works(values, policy, "served") is False:
        caption += (
            " The triggers did not work before deletion either: this check cannot tell here, and the "
            "other checks decide."
        )
    return title, caption


# ------------------------------------------------------------------------------------- all of them


def write_figures(results: Mapping[str, CheckResult], directory: Path, policy: Policy) -> list[Figure]:
    """Every figure the checks' results allow, drawn into `directory` (skipped ones listed too)."""
    figures = []
    mia = results.get("mia")
    if mia is not None and mia.plot_data:
        data = mia.plot_data
        figures.append(plot_roc(directory / "roc.png", data["attack"], data["scores"], mia.metrics, policy))
        figures.append(plot_loss_hist(directory / "loss_hist.png", data["loss"]))
    canary, backdoor = results.get("canary"), results.get("backdoor")
    if canary is not None and canary.plot_data:
        figures.append(
            plot_canaries(
                directory / "canary_ranks.png",
                canary.plot_data["table"],
                canary.plot_data["roles"],
                canary,
                policy,
            )
        )
    elif backdoor is not None and "backdoor.n" in backdoor.values:
        # backdoor triggers are the classifiers' canaries: same figure slot
        figures.append(plot_backdoor(directory / "canary_ranks.png", backdoor.values, policy))
    return figures
