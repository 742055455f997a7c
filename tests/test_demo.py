"""`make demo`'s ending: the key metrics with their intervals, and whether it stays open for the dashboard.
(The demo as a whole runs a training and a deletion: minutes, so it is not part of the suite.)"""

from __future__ import annotations

import io

import pytest

from scripts.demo import key_metric_lines, stays_open
from tests.dashboard.factory import sample_report


def test_key_metrics_show_served_and_promoted_values_with_their_intervals():
    lines = key_metric_lines(sample_report())
    assert lines == ["  LiRA attack AUC, forgotten vs held-out   0.81 [0.74, 0.88] -> 0.51 [0.41, 0.61]"]


def test_a_report_without_those_metrics_says_so_rather_than_printing_nothing():
    report = sample_report()
    report["checks"] = {}
    assert key_metric_lines(report) == ["  (the report compares none of them: see report.json)"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("terminal", "argv", "demo_exit", "expected"),
    [
        (True, [], None, True),
        (True, [], "0", True),
        (True, ["--exit"], None, False),
        (True, [], "1", False),
        (False, [], None, False),  # CI, a pipe
    ],
)
def test_the_demo_stays_open_on_a_terminal_unless_asked_to_exit(
    monkeypatch, terminal, argv, demo_exit, expected
):
    stream = Terminal if terminal else io.StringIO
    monkeypatch.setattr("sys.stdin", stream())
    monkeypatch.setattr("sys.stdout", stream())
    if demo_exit is None:
        monkeypatch.delenv("DEMO_EXIT", raising=False)
    else:
        monkeypatch.setenv("DEMO_EXIT", demo_exit)
    assert stays_open(argv) is expected
