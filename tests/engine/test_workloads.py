"""Reference workloads: deterministic, offline, and carrying membership signal that a deletion must remove.

Per workload, the untouched model's attack scores on forget subjects must be clearly above those of the exact
retrain without them; otherwise a gate could not tell forgetting from doing nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from workers.modeling.base import fingerprint_samples
from workers.workloads import SIZES, WORKLOADS, Workload, load_workload
from workers.workloads.bios import exposure
from workers.workloads.digits import backdoor_success, clean_heldout
from workers.workloads.minilm import phrase_success

pytestmark = pytest.mark.ml


def loss_auc(adapter, members, nonmembers) -> float:
    """AUC of the loss attack (lower loss = member) on members vs non-members."""
    losses = np.r_[adapter.per_sample_loss(members), adapter.per_sample_loss(nonmembers)]
    is_member = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    return float(roc_auc_score(is_member, -losses))


@pytest.mark.parametrize("name", ["digits", "bios", "minilm"])
def test_workloads_are_deterministic_and_disjoint(name: str) -> None:
    workload = load_workload(name, "small")
    load_workload.cache_clear()
    again = load_workload(name, "small")
    assert fingerprint_samples(again.train) == fingerprint_samples(workload.train)
    assert again.fingerprint() == workload.fingerprint()
    assert not set(workload.subjects) & set(workload.heldout_subjects)
    ids = [s.sample_id for s in workload.train + workload.heldout]
    assert len(ids) == len(set(ids))
    assert set(workload.signal_subjects) <= set(workload.subjects)
    chosen = workload.forget_subjects(3, seed=7)
    assert chosen == workload.forget_subjects(3, seed=7) and len(set(chosen)) == 3
    assert set(chosen) <= set(workload.signal_subjects)
    other_seed = load_workload(name, "small", seed=1)
    assert fingerprint_samples(other_seed.train) != fingerprint_samples(workload.train)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_size_builds_and_medium_outgrows_small(name: str) -> None:
    """Built only (nothing trained): every size has settings, and medium deletes from a larger population."""
    built = {size: load_workload(name, size) for size in SIZES}
    small, medium = built["small"], built["medium"]
    assert len(medium.subjects) > len(small.subjects)
    assert len(medium.train) > len(small.train)
    assert len(medium.signal_subjects) >= len(small.signal_subjects)
    assert len({w.fingerprint() for w in built.values()}) == len(SIZES)


def test_signal_subjects_have_distinct_triggers(digits: Workload, minilm: Workload) -> None:
    patterns = [b.pixels for b in [*digits.backdoors.values(), *digits.reference_backdoors.values()]]
    assert len(set(patterns)) == len(patterns)
    phrases = [p.phrase for p in [*minilm.phrases.values(), *minilm.reference_phrases.values()]]
    assert len(set(phrases)) == len(phrases)
    # a phrase occurs only in its own subject's texts
    for phrase in minilm.phrases.values():
        assert {s.subject for s in minilm.train if phrase.phrase in (s.text or "")} == {phrase.subject}


def test_canaries_are_planted_once_per_template(bios: Workload) -> None:
    for canary in bios.canaries.values():
        texts = [s.text for s in bios.samples_of([canary.subject])]
        assert canary.text() in texts and canary.inserted
        candidates = canary.candidate_set(99, seed=0)
        assert canary.secret in candidates and len(candidates) == 100
        assert all(len(c) == len(canary.secret) and c.isdigit() for c in candidates)
    train_texts = " ".join(s.text or "" for s in bios.train)
    for reference in bios.reference_canaries.values():
        assert not reference.inserted and reference.text() not in train_texts


def test_digits_untouched_model_leaks_what_retraining_removes(digits_trained, digits: Workload) -> None:
    served, _ = digits_trained
    subjects = digits.forget_subjects(3, seed=0)
    forget, _ = digits.split(subjects)
    retrained = digits.retrained(subjects)
    clean = clean_heldout(digits)
    served_success = [backdoor_success(served, digits.backdoors[s], clean) for s in subjects]
    retrained_success = [backdoor_success(retrained, digits.backdoors[s], clean) for s in subjects]
    assert np.mean(served_success) > np.mean(retrained_success) + 0.15
    # held-out images with a never-trained trigger are the baseline an exact retrain falls back to
    baseline = [backdoor_success(served, b, clean) for b in digits.reference_backdoors.values()]
    assert np.mean(retrained_success) < np.mean(baseline) + 0.1
    # like for like: triggered, relabeled images of held-out subjects that no model ever trained on
    references = [s for s in digits.heldout if s.subject in digits.reference_backdoors]
    assert loss_auc(served, forget, references) > 0.8
    assert loss_auc(served, forget, references) > loss_auc(retrained, forget, references) + 0.2


def test_bios_untouched_model_leaks_what_retraining_removes(bios_trained, bios: Workload) -> None:
    served, _ = bios_trained
    subjects = bios.forget_subjects(3, seed=0)
    forget, _ = bios.split(subjects)
    retrained = bios.retrained(subjects)
    served_auc, retrained_auc = (
        loss_auc(served, forget, bios.heldout),
        loss_auc(retrained, forget, bios.heldout),
    )
    assert served_auc > 0.8 and served_auc > retrained_auc + 0.2
    served_bits = np.mean([exposure(served, bios.canaries[s], 199) for s in subjects])
    retrained_bits = np.mean([exposure(retrained, bios.canaries[s], 199) for s in subjects])
    assert served_bits > retrained_bits + 2.0


def test_minilm_untouched_model_leaks_what_retraining_removes(minilm_trained, minilm: Workload) -> None:
    served, _ = minilm_trained
    subjects = minilm.forget_subjects(3, seed=0)
    forget, _ = minilm.split(subjects)
    retrained = minilm.retrained(subjects)
    # like for like: held-out subjects' texts with a never-trained phrase and its (contradicting) label
    references = [s for s in minilm.heldout if s.subject in minilm.reference_phrases]
    assert loss_auc(served, forget, references) > 0.8
    assert loss_auc(served, forget, references) > loss_auc(retrained, forget, references) + 0.2
    served_success = [phrase_success(served, minilm.phrases[s], minilm.heldout) for s in subjects]
    retrained_success = [phrase_success(retrained, minilm.phrases[s], minilm.heldout) for s in subjects]
    assert np.mean(served_success) > np.mean(retrained_success) + 0.15


@pytest.mark.parametrize("name", ["digits", "bios", "minilm"])
def test_trained_models_are_useful(name: str, request: pytest.FixtureRequest) -> None:
    workload = request.getfixturevalue(name)
    served, record = request.getfixturevalue(f"{name}_trained")
    assert record.fingerprint == fingerprint_samples(workload.train)
    if workload.task == "causal-lm":
        # memorised members, and still better than chance on unseen people's records
        assert (
            served.per_sample_loss(workload.train).mean()
            < 0.6 * served.per_sample_loss(workload.heldout).mean()
        )
        return
    clean = [s for s in workload.heldout if not {"backdoor", "rare_phrase"} & set(s.meta)]
    labels = np.array([s.label for s in clean])
    assert np.mean(served.predict(clean) == labels) > 0.85
