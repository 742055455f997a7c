"""LiRA reference models: split by subject, trained once, found again in the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workers.verification.references import balanced_membership, ensure_references

pytestmark = pytest.mark.ml


def test_every_subject_is_in_exactly_half_of_the_references() -> None:
    subjects = [f"s{i // 3}" for i in range(30)]  # 10 subjects, 3 samples each
    mask = balanced_membership(subjects, 8, seed=0)
    assert mask.shape == (8, 30)
    assert (mask.sum(axis=0) == 4).all()
    for i in range(0, 30, 3):  # a subject's samples are together: all IN or all OUT
        assert (mask[:, i] == mask[:, i + 1]).all() and (mask[:, i] == mask[:, i + 2]).all()


def test_references_are_trained_once_and_reused(digits, digits_trained, tmp_path: Path) -> None:
    served, _ = digits_trained
    training = digits.train[:240]
    calls: list[int] = []

    def trainer(samples, seed):  # a stand-in that records what it was asked to train on
        calls.append(len(samples))
        return served.clone()

    first = ensure_references(tmp_path, served, training, trainer, k=4, seed=0, fingerprint="v1")
    assert len(calls) == 4 and first.trained_now
    assert all(abs(n - len(training) / 2) < len(training) / 4 for n in calls)
    losses = first.losses(training[:10])
    second = ensure_references(tmp_path, served, training, trainer, k=4, seed=0, fingerprint="v1")
    assert len(calls) == 4 and not second.trained_now
    assert np.allclose(second.losses(training[:10]), losses)
    ensure_references(tmp_path, served, training, trainer, k=4, seed=0, fingerprint="v2")
    assert len(calls) == 8  # another served version: its own references
