"""The null of exact retrains assembled per subject: calibrated, and honest about correlated subjects."""

from __future__ import annotations

import numpy as np
import pytest

from workers.verification.retrain_null import SubjectDraws, assemble, pair_correlation

pytestmark = pytest.mark.ml


def simulate(rng: np.random.Generator, n_subjects: int, k: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """[k, n] per-subject statistics of k models (each subject with its own centre and spread) whose
    subjects share a model effect of correlation rho, and which subjects each model left out (half)."""
    centre, spread = rng.normal(0, 1, n_subjects), rng.uniform(0.5, 2, n_subjects)
    model_effect = rng.normal(0, 1, (k, 1))
    own = rng.normal(0, 1, (k, n_subjects))
    values = centre + spread * (np.sqrt(rho) * model_effect + np.sqrt(1 - rho) * own)
    out = (np.argsort(rng.random((n_subjects, k)), axis=1) < k // 2).T
    return values, out, centre, spread


@pytest.mark.parametrize("n_subjects", [1, 5])
def test_one_more_exact_retrain_exceeds_the_bound_about_as_often_as_alpha(n_subjects: int) -> None:
    """The bound is a prediction bound: a NEW draw (an exact retrain the null never saw) lands beyond the
    0.5 % bound about 0.5 % of the time, also with only 8 draws per subject."""
    rng = np.random.default_rng(7)
    beyond, trials = 0, 2000
    for _ in range(trials):
        values, out, centre, spread = simulate(rng, n_subjects, 16, 0.0)
        draws = [SubjectDraws(str(s), 1.0, values[out[:, s], s]) for s in range(n_subjects)]
        null = assemble(draws)
        fresh = np.mean(centre + spread * rng.normal(0, 1, n_subjects))
        beyond += fresh > null.upper(0.005)
    assert beyond / trials < 0.015


def test_correlated_subjects_widen_the_null_and_the_correlation_is_measured() -> None:
    rng = np.random.default_rng(8)
    values, out, _, _ = simulate(rng, 200, 16, 0.4)
    rho = pair_correlation(values, out)
    assert 0.25 < rho < 0.55
    draws = [SubjectDraws(str(s), 1.0, values[out[:, s], s]) for s in range(5)]
    assert assemble(draws, rho).sd > assemble(draws, 0.0).sd * 1.3
    independent, out0, _, _ = simulate(rng, 200, 16, 0.0)
    assert abs(pair_correlation(independent, out0)) < 0.1


def test_no_spread_no_null() -> None:
    assert assemble([SubjectDraws("a", 1.0, np.array([0.3]))]) is None
    assert assemble([]) is None
