"""The report's figures as a reader meets them: a title that states the finding, a caption with the
numbers, labels that do not run into each other at any sample size, and a sentence instead of a plot
when there are too few records."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from workers.verification import plots
from workers.verification.checks import CheckResult
from workers.verification.stats import Estimate, auc_difference

ROLES = ("served", "candidate", "reference")


@dataclass
class Drawn:
    """A figure as it was rendered for saving: its size, x tick labels and which of them collide."""

    width_inches: float
    axes: list[Any]
    xlabels: list[list[str]]
    overlaps: list[tuple[str, str]]


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Drawn]:
    """What the plot functions draw, measured on the rendered figure just before it is saved."""
    figures: list[Drawn] = []
    save = plots._save

    def keep(fig: Any, path: Path) -> None:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        labels = [
            [t for t in ax.get_xticklabels(which="both") if t.get_visible() and t.get_text()]
            for ax in fig.axes
        ]
        overlaps = []
        for on_axes in labels:
            boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in on_axes]
            overlaps += [
                (a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)
            ]
        figures.append(
            Drawn(
                fig.get_size_inches()[0],
                list(fig.axes),
                [[t.get_text() for t in ax] for ax in labels],
                overlaps,
            )
        )
        save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def scores(n_forget: int, n_heldout: int, candidate_shift: float, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    shifts = {"served": 1.6, "candidate": candidate_shift, "reference": 0.0}
    return {
        role: {"forget": rng.normal(shift, 1, n_forget), "heldout": rng.normal(0, 1, n_heldout)}
        for role, shift in shifts.items()
    }


def mia_metrics(by_role: dict[str, Any]) -> dict[str, Any]:
    return {
        f"lira.forget_auc.{role}-reference": auc_difference(
            by_role[role]["forget"],
            by_role[role]["heldout"],
            by_role["reference"]["forget"],
            by_role["reference"]["heldout"],
            200,
        )
        for role in ("candidate", "served")
    }


def losses(n: int, centre: float, spread: float, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per-record losses around exp(centre), `spread` wide in log space."""
    rng = np.random.default_rng(seed)
    return {
        role: {
            "forget": np.exp(rng.normal(centre + (0.0 if role == "served" else spread), spread, n)),
            "retain": np.exp(rng.normal(centre, spread, 4 * n)),
            "heldout": np.exp(rng.normal(centre + spread, spread, 4 * n)),
        }
        for role in ROLES
    }


def test_roc_title_says_what_an_attacker_can_do(tmp_path: Path, drawn: list[Drawn]) -> None:
    forgotten = scores(60, 400, candidate_shift=0.05)
    figure = plots.plot_roc(tmp_path / "roc.png", "lira", forgotten, mia_metrics(forgotten))
    assert figure.drawn and (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert figure.title == (
        "An attacker tells the forgotten records from never-seen ones no better than after retraining"
    )
    assert re.search(
        r"AUC 0\.\d\d for the new version, where retraining without the records gives 0\.\d\d", figure.caption
    )
    assert "95 % interval" in figure.caption

    remembered = scores(60, 400, candidate_shift=1.4)
    figure = plots.plot_roc(tmp_path / "roc2.png", "lira", remembered, mia_metrics(remembered))
    assert figure.title == "An attacker still recognises the forgotten records better than after retraining"

    ax = drawn[0].axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "linear"
    # the candidate is drawn after (over) the wide reference band
    lines = [line.get_label() for line in ax.get_lines()]
    assert lines.index(next(x for x in lines if x.startswith("new version"))) > lines.index(
        next(x for x in lines if x.startswith("retrained"))
    )


def test_a_powerless_attack_is_called_so(tmp_path: Path) -> None:
    blind = scores(60, 400, candidate_shift=0.0)
    blind["served"]["forget"] = np.random.default_rng(9).normal(0, 1, 60)  # the served model hides them too
    figure = plots.plot_roc(tmp_path / "roc.png", "lira", blind, mia_metrics(blind))
    assert "this attack has no power" in figure.caption


@pytest.mark.parametrize(("n_forget", "n_heldout"), [(3, 400), (60, 12)])
def test_too_few_records_give_a_sentence_not_a_curve(tmp_path: Path, n_forget: int, n_heldout: int) -> None:
    figure = plots.plot_roc(tmp_path / "roc.png", "lira", scores(n_forget, n_heldout, 0.0))
    assert not figure.drawn and figure.file is None and not (tmp_path / "roc.png").exists()
    assert f"{n_forget} forgotten and {n_heldout} never-seen records" in figure.caption


@pytest.mark.parametrize("n", [10, 3000])
@pytest.mark.parametrize(("centre", "spread"), [(1.2, 0.05), (-1.0, 0.3), (0.5, 0.4), (-6.0, 2.5)])
def test_loss_histogram_labels_never_overlap(
    tmp_path: Path, drawn: list[Drawn], n: int, centre: float, spread: float
) -> None:
    figure = plots.plot_loss_hist(tmp_path / "loss.png", losses(n, centre, spread))
    assert figure.drawn
    (fig,) = drawn
    assert fig.overlaps == []
    assert all(len(labels) >= 2 for labels in fig.xlabels)  # readable: at least two numbers on each axis


@pytest.mark.parametrize(("low", "high"), [(0.4, 6.0), (0.9, 9.5), (2.0, 3.5)])
def test_loss_axis_of_about_a_decade_carries_several_numbers(
    tmp_path: Path, drawn: list[Drawn], low: float, high: float
) -> None:
    spread = {split: np.geomspace(low, high, 40) for split in ("forget", "retain", "heldout")}
    plots.plot_loss_hist(tmp_path / "loss.png", {role: spread for role in ROLES})
    (fig,) = drawn
    assert fig.overlaps == [] and all(len(labels) >= 3 for labels in fig.xlabels)


def test_loss_histogram_of_few_records_is_skipped_with_the_count(tmp_path: Path) -> None:
    figure = plots.plot_loss_hist(tmp_path / "loss.png", losses(4, -1.0, 0.5))
    assert not figure.drawn and "4 forgotten records" in figure.caption


def canary_table(deleted: int, control: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(2)
    rows = []
    for group, count in (("deleted", deleted), ("kept", 1), ("control", control)):
        for _ in range(count):
            served = 7.5 if group != "control" else float(rng.exponential(1.4))
            after = served if group == "kept" else float(rng.exponential(1.4))
            rows.append(
                {
                    "group": group,
                    "subject": "9f" * 32,  # the service knows subjects only by their HMAC
                    "served": {"exposure_bits": served, "rank": 1, "candidates": 256},
                    "candidate": {"exposure_bits": after, "rank": 1, "candidates": 256},
                }
            )
    return rows


@pytest.mark.parametrize(("deleted", "control"), [(2, 2), (40, 30)])
def test_canaries_are_labelled_by_kind_and_explained(
    tmp_path: Path, drawn: list[Drawn], deleted: int, control: int
) -> None:
    figure = plots.plot_canaries(
        tmp_path / "canaries.png", canary_table(deleted, control), ["served", "candidate"]
    )
    (fig,) = drawn
    labels = fig.xlabels[0]
    assert not any("9f9f" in label for label in labels)
    kinds = {re.sub(r"[ (]?\d+\)?$", "", label).strip() for label in labels}
    assert kinds == {"deleted", "kept", "never inserted"}
    assert fig.overlaps == []
    assert fig.width_inches <= 12  # many canaries do not stretch the figure into a strip
    assert "one deleted canary may rise after unlearning" in figure.caption
    assert f"{deleted} deleted, 1 kept, {control} never inserted" in figure.caption


def test_canary_title_follows_the_canary_test(tmp_path: Path) -> None:
    check = CheckResult("canary")
    table = canary_table(6, 6)
    check.metrics["canary.deleted_minus_control_bits.candidate"] = Estimate(2.0, 1.0, 3.0, 12)
    check.values["canary.deleted_pvalue.candidate"] = 0.001
    still = plots.plot_canaries(tmp_path / "a.png", table, ["served", "candidate"], check)
    assert still.title.startswith("The deleted canaries are still more exposed")
    check.values["canary.deleted_pvalue.candidate"] = 0.5
    gone = plots.plot_canaries(tmp_path / "b.png", table, ["served", "candidate"], check)
    assert gone.title.startswith("The deleted canaries are not significantly more exposed")


def test_report_figures_of_a_real_deletion(verified) -> None:
    report = verified("digits", "none").report
    data = report.to_dict()
    by_name = {figure["name"]: figure for figure in data["figures"]}
    assert set(by_name) == {"roc", "loss_hist", "canary_ranks"}
    for figure in data["figures"]:
        assert figure["title"] and figure["caption"]
        if figure["file"]:
            assert figure["file"] in data["plots"]
            assert (Path(report.directory) / figure["file"]).read_bytes()[:4] == b"\x89PNG"
    # the untouched model is verified: every figure must say the records are still recognised
    assert by_name["roc"]["title"].startswith("An attacker still recognises")
    assert "still work" in by_name["canary_ranks"]["title"]
