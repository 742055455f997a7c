"""Quick utility numbers for a workload run: loss and accuracy (classifiers) or perplexity (LMs) per split.

The CLI, the benchmark and the method tests read the same numbers. Perplexity is exp of the mean
per-sample token loss, as in workers.verification.utility. The gate's verdict, with its intervals, is
workers.verification's business; these are the plain means a reader compares across methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.modeling.base import ModelAdapter, Sample
from workers.unlearning.common import is_language_model, subsample

SPLITS = ("forget", "retain", "heldout")
EVAL_CAP = 1000  # samples per split; a seeded subsample beyond it keeps evaluation cheap at full size


@dataclass
class Scenario:
    """One deletion on a workload: forget/retain split, validation data the method may use, test data."""

    subjects: list[str]
    forget: list[Sample]
    retain: list[Sample]
    validation: list[Sample]
    test: list[Sample]

    def evaluation_sets(self, seed: int = 0) -> dict[str, list[Sample]]:
        return {
            "forget": subsample(self.forget, EVAL_CAP, seed),
            "retain": subsample(self.retain, EVAL_CAP, seed),
            "heldout": subsample(self.test, EVAL_CAP, seed),
        }


def scenario(
    workload: Any, n_subjects: int = 1, seed: int = 0, subjects: Sequence[str] | None = None
) -> Scenario:
    """Forget `subjects`, or else the workload's choice of `n_subjects` subjects (signal carriers first).

    Held-out data is split by subject into validation (for the method) and test (for the numbers).
    Held-out subjects carrying a never-trained trigger or phrase are left out: their planted labels make
    their loss unlike ordinary unseen data. (Reference canaries stay: a PIN sentence is ordinary text.)
    """
    subjects = list(subjects) if subjects is not None else workload.forget_subjects(n_subjects, seed)
    forget, retain = workload.split(subjects)
    planted = set(workload.reference_backdoors) | set(workload.reference_phrases)
    heldout_subjects = [s for s in workload.heldout_subjects if s not in planted]
    validation_subjects = set(heldout_subjects[::2])
    clean = [s for s in workload.heldout if s.subject not in planted]
    validation = [s for s in clean if s.subject in validation_subjects]
    test = [s for s in clean if s.subject not in validation_subjects]
    return Scenario(subjects, forget, retain, validation, test)


def utility(adapter: ModelAdapter, sets: Mapping[str, Sequence[Sample]]) -> dict[str, dict[str, float]]:
    """Per split: mean loss, and accuracy (classifiers) or perplexity (language models)."""
    out: dict[str, dict[str, float]] = {}
    lm = is_language_model(adapter)
    for split, samples in sets.items():
        losses = adapter.per_sample_loss(samples)
        numbers = {"loss": float(losses.mean())}
        if lm:
            numbers["perplexity"] = float(np.exp(losses.mean()))
        else:
            labels = np.array([s.label for s in samples])
            numbers["accuracy"] = float(np.mean(adapter.predict(samples) == labels))
        out[split] = numbers
    return out
