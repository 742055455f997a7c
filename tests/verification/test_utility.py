"""The utility check's allowance for a deletion: read off models trained on half of the subjects."""

from __future__ import annotations

import numpy as np
import pytest

from workers.modeling.base import Sample
from workers.verification.checks import EvalSets, split_signals
from workers.verification.gate import Policy
from workers.verification.utility import check_utility

pytestmark = pytest.mark.ml


def sets(n_heldout: int = 40) -> EvalSets:
    sample = lambda i, part: Sample(f"{part}{i}", f"{part}-subject-{i // 2}", label=0)  # noqa: E731
    return EvalSets(
        [sample(i, "f") for i in range(4)],
        [sample(i, "r") for i in range(40)],
        [sample(i, "h") for i in range(n_heldout)],
    )


def correct_rows(s: EvalSets, accuracy: float, rows: int) -> dict[str, np.ndarray]:
    """Every model right on forget and retain, right on `accuracy` of the held-out samples."""
    heldout = len(s.heldout)
    right = round(accuracy * heldout)
    correct = np.concatenate([np.ones(len(s.all) - heldout), np.ones(right), np.zeros(heldout - right)])
    return {"loss": np.ones((rows, len(s.all))), "correct": np.tile(correct, (rows, 1))}


def check(s: EvalSets, half_accuracy: float, share: float):
    served = split_signals(s, {k: v[0] for k, v in correct_rows(s, 0.95, 1).items()})
    signals = {"served": served, "candidate": served}
    replicas = correct_rows(s, 0.95, 4)
    halves = correct_rows(s, half_accuracy, 8)
    return check_utility(signals, s, False, Policy(n_boot=50), replicas, halves, share)


def test_a_deletion_is_allowed_what_its_share_of_the_data_was_worth() -> None:
    s = sets()
    # half the subjects give 0.80 against the full data's 0.95: deleting a tenth costs 2 x 0.1 x 0.15
    result = check(s, 0.80, 0.1)
    assert result.values["utility.accuracy_heldout.deletion_shift"] == pytest.approx(-0.03, abs=1e-9)
    # never a tighter rule: half-data models that did better leave no allowance
    assert check(s, 1.0, 0.1).values["utility.accuracy_heldout.deletion_shift"] == 0.0
    # nothing deleted from the references' subjects: no allowance measured
    assert "utility.accuracy_heldout.deletion_shift" not in check(s, 0.80, 0.0).values
