"""The methods benchmark forgets only subjects whose signal the served model carries (bench.unlearning)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.unlearning import pick_forget_subjects
from workers.workloads import load_workload

pytestmark = pytest.mark.ml


def test_picker_follows_the_seeded_carrier_order_and_stops_when_it_has_enough() -> None:
    judged: list[str] = []

    def first_one_carries_nothing(workload: str, size: str, subject: str, seed: int) -> dict[str, Any]:
        judged.append(subject)
        carries = len(judged) > 1
        return {
            "subject": subject,
            "verdict": "fail" if carries else "inconclusive",
            "powered_failures": ["backdoor"] if carries else [],
        }

    picked = pick_forget_subjects("digits", "small", 2, seed=3, judge=first_one_carries_nothing)
    workload = load_workload("digits", "small")
    order = workload.forget_subjects(len(workload.signal_subjects), seed=3)
    assert judged == order[:3]
    assert picked["chosen"] == order[1:3]
    assert [s["subject"] for s in picked["skipped"]] == order[:1]
    assert (picked["tried"], picked["carriers"]) == (3, len(order))


def test_picker_skips_a_carrier_the_gate_does_not_fail_on_the_untouched_model() -> None:
    """On small digits the served model kept only some subjects' triggers (see workload_case's
    DEFAULT_FORGET_SUBJECTS): the gate cannot fail the untouched model for the others, which are skipped."""
    workload = load_workload("digits", "small")
    carriers = len(workload.signal_subjects)
    picked = pick_forget_subjects("digits", "small", carriers, seed=0)
    assert picked["tried"] == carriers
    assert picked["skipped"] and picked["chosen"]
    assert all(not s["powered_failures"] for s in picked["skipped"])
    assert all(q["verdict"] == "fail" and q["powered_failures"] for q in picked["qualified"])
    assert picked["chosen"] == [q["subject"] for q in picked["qualified"]]
