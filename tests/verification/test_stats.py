"""The statistics primitives against direct computations and known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from workers.verification import stats

pytestmark = pytest.mark.ml


def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 4, 40).astype(float)
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert stats.auc(pos, neg) == pytest.approx(pairwise)
    fpr, tpr = stats.roc_curve(pos, neg)
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairwise)


def test_auc_interval_covers_the_true_value_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    true_auc = 0.7602  # two unit normals 1 apart: Phi(1 / sqrt(2))
    covered = 0
    for i in range(200):
        e = stats.auc_estimate(rng.normal(1, 1, 25), rng.normal(0, 1, 100), n_boot=400, seed=i)
        covered += e.low <= true_auc <= e.high
    assert 0.88 <= covered / 200 <= 0.99


def test_paired_difference_of_identical_models_is_exactly_zero() -> None:
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(1, 1, 20), rng.normal(0, 1, 80)
    d = stats.auc_difference(pos, neg, pos, neg)
    assert (d.value, d.low, d.high) == (0.0, 0.0, 0.0)
    assert stats.tpr_difference(pos, neg, pos, neg, 0.01).half_width == 0.0


def test_tpr_at_low_fpr_uses_the_strictest_threshold_the_negatives_allow() -> None:
    neg = np.arange(100, dtype=float)  # 0..99
    pos = np.array([98.5, 99.5, 120.0, 50.0])
    assert stats.tpr_at_fpr(pos, neg, 0.01) == pytest.approx(0.75)  # one negative (99) may pass
    assert stats.tpr_at_fpr(pos, neg, 0.001) == pytest.approx(0.5)  # none may: above 99
    e = stats.tpr_estimate(pos, neg, 0.01, n_boot=200)
    assert e.groups == {"positive": 4, "negative": 100}


def test_binomial_test_and_exact_interval() -> None:
    assert stats.binomial_test(9, 10, 0.1) < 1e-6
    assert stats.binomial_test(1, 10, 0.1) > 0.5
    e = stats.proportion_estimate(0, 20)
    assert e.value == 0 and e.low == 0 and 0.1 < e.high < 0.2


def test_exposure_null_is_calibrated_for_never_inserted_secrets() -> None:
    rng = np.random.default_rng(3)
    size = 256
    pvalues = [
        stats.fisher_exposure_pvalue(np.log2(size) - np.log2(rng.integers(1, size + 1, 3)))
        for _ in range(3000)
    ]
    assert np.mean(np.array(pvalues) < 0.05) <= 0.06  # uniform ranks: at most the nominal rate
    assert stats.fisher_exposure_pvalue([8.0]) == pytest.approx(2**-8)


def test_intervals_over_subjects_cover_where_intervals_over_samples_do_not() -> None:
    """A subject's samples share a random effect: resampling samples ignores it and undercovers."""
    rng = np.random.default_rng(4)
    subjects = np.repeat(np.arange(12), 10)
    covered = {"samples": 0, "subjects": 0}
    trials = 150
    for i in range(trials):
        values = rng.normal(0, 1, 12)[subjects] + rng.normal(0, 0.3, subjects.size)  # true mean 0
        by_sample = stats.mean_estimate(values, n_boot=400, seed=i)
        by_subject = stats.mean_estimate(values, n_boot=400, seed=i, clusters=subjects)
        covered["samples"] += by_sample.low <= 0 <= by_sample.high
        covered["subjects"] += by_subject.low <= 0 <= by_subject.high
    assert covered["subjects"] / trials >= 0.85
    assert covered["samples"] / trials <= 0.6
    assert by_subject.groups == {"subjects": 12}


def test_cluster_bootstrap_of_auc_and_tpr_resamples_whole_subjects() -> None:
    rng = np.random.default_rng(5)
    pos, neg = rng.normal(1, 1, 40), rng.normal(0, 1, 200)
    pos_subjects, neg_subjects = np.repeat(np.arange(4), 10), np.repeat(np.arange(40), 5)
    plain = stats.auc_estimate(pos, neg, n_boot=500)
    clustered = stats.auc_estimate(pos, neg, 500, 0, pos_subjects, neg_subjects)
    assert clustered.value == plain.value
    assert clustered.groups["positive_subjects"] == 4 and clustered.groups["negative_subjects"] == 40
    tpr = stats.tpr_estimate(pos, neg, 0.05, 500, 0, pos_subjects, neg_subjects)
    assert tpr.value == pytest.approx(stats.tpr_at_fpr(pos, neg, 0.05))
    assert tpr.low <= tpr.value <= tpr.high
    same = stats.tpr_difference(pos, neg, pos, neg, 0.05, 200, 0, pos_subjects, neg_subjects)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)


def test_auc_decomposes_over_subjects() -> None:
    rng = np.random.default_rng(6)
    pos, neg = rng.normal(0.5, 1, 30), rng.normal(0, 1, 50)
    subjects = np.repeat(["a", "b", "c"], [5, 10, 15])
    parts = stats.auc_by_cluster(pos, neg, subjects)
    weights = {"a": 5 / 30, "b": 10 / 30, "c": 15 / 30}
    assert sum(weights[s] * parts[s] for s in parts) == pytest.approx(stats.auc(pos, neg))
