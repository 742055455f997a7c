"""The report's plots (matplotlib, Agg backend: no display needed): written as PNG files into a directory.

- roc.png: ROC of the gated attack, forget vs held-out, for served, candidate, reference (and the relearned
  candidate) on log-log axes, where low false-positive rates are visible;
- loss_hist.png: per-sample loss of forget, retain and held-out samples under each model;
- canary_ranks.png: exposure of deleted, kept and never-inserted canaries per model (language models), or
  the trigger success rates of the forget subjects' backdoors per model (classifiers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workers.verification.stats import roc_curve

ROLE_STYLE = {
    "served": {"color": "tab:red", "linestyle": "-"},
    "candidate": {"color": "tab:blue", "linestyle": "-"},
    "reference": {"color": "tab:green", "linestyle": "--"},
    "relearned": {"color": "tab:purple", "linestyle": ":"},
    "reference_relearned": {"color": "tab:olive", "linestyle": ":"},
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(path: Path, attack: str, scores: dict[str, dict[str, np.ndarray]]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    floor = 1.0
    for role, s in scores.items():
        fpr, tpr = roc_curve(s["forget"], s["heldout"])
        floor = min(floor, 1.0 / max(1, s["heldout"].size))
        ax.step(
            np.clip(fpr, floor / 2, 1),
            np.clip(tpr, floor / 2, 1),
            where="post",
            label=role,
            **ROLE_STYLE[role],
        )
    ax.plot([floor / 2, 1], [floor / 2, 1], color="grey", linewidth=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false positive rate (held-out)")
    ax.set_ylabel("true positive rate (forget)")
    ax.set_title(f"{attack} attack: forget vs held-out")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_loss_hist(path: Path, losses: dict[str, dict[str, np.ndarray]]) -> None:
    plt = _pyplot()
    roles = list(losses)
    fig, axes = plt.subplots(1, len(roles), figsize=(3.6 * len(roles), 3.4), sharex=True, squeeze=False)
    everything = np.concatenate([v for by_split in losses.values() for v in by_split.values() if v.size])
    finite = everything[np.isfinite(everything)]
    low, high = max(float(finite.min()), 1e-6), max(float(finite.max()), 1e-5)
    bins = np.geomspace(low, high * 1.01, 30)
    for ax, role in zip(axes[0], roles, strict=True):
        for split, color in (("retain", "tab:grey"), ("heldout", "tab:orange"), ("forget", "tab:blue")):
            values = np.clip(losses[role][split], low, high)
            if values.size:
                ax.hist(
                    values,
                    bins=bins,
                    density=True,
                    alpha=0.5,
                    color=color,
                    label=f"{split} (n={values.size})",
                )
        ax.set_xscale("log")
        ax.set_title(role)
        ax.set_xlabel("per-sample loss")
    axes[0][0].set_ylabel("density")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def short_label(subject: str, keep: int = 12) -> str:
    """Subjects known to the service only by their 64-hex HMAC would crowd the axis out."""
    return subject if len(subject) <= keep + 4 else subject[:keep] + "…"


def plot_canaries(path: Path, table: list[dict[str, Any]], roles: list[str]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(table) + 2), 3.8))
    width = 0.8 / max(1, len(roles))
    x = np.arange(len(table))
    for i, role in enumerate(roles):
        bits = [row[role]["exposure_bits"] if role in row else np.nan for row in table]
        ax.bar(x + i * width, bits, width, label=role, color=ROLE_STYLE[role]["color"])
    ax.set_xticks(x + 0.4 - width / 2)
    ax.set_xticklabels(
        [f"{row['group']}\n{short_label(row['subject'])}" for row in table], fontsize=6, rotation=60
    )
    top = max((row[roles[0]]["candidates"] for row in table), default=2)
    ax.axhline(np.log2(top), color="grey", linewidth=0.8, linestyle="--", label="max (rank 1)")
    ax.set_ylabel("exposure (bits)")
    ax.set_title("canary exposure: deleted, kept, never inserted")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_backdoor(path: Path, values: dict[str, Any]) -> None:
    """Trigger success rate of the forget subjects' triggers beside each model's clean baseline."""
    plt = _pyplot()
    roles = [k.rsplit(".", 1)[1] for k in values if k.startswith("backdoor.baseline_rate.")]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = np.arange(len(roles))
    rates = [values[f"backdoor.success_rate.{r}"] for r in roles]
    baselines = [values[f"backdoor.baseline_rate.{r}"] for r in roles]
    ax.bar(x - 0.2, rates, 0.4, color=[ROLE_STYLE[r]["color"] for r in roles], label="forget triggers")
    ax.bar(
        x + 0.2, baselines, 0.4, color="lightgrey", label=f"baseline ({values.get('backdoor.baseline', '')})"
    )
    ax.set_xticks(x)
    ax.set_xticklabels(roles)
    ax.set_ylabel(f"trigger success rate (n={values['backdoor.n']})")
    ax.set_title("backdoor canaries of the forget subjects")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
