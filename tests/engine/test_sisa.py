"""SISA: a sharded layout chosen at training time, and `sisa`, which retrains only the affected shards.

The promise a user checks: a deletion by `sisa` gives exactly the model that retraining every shard
without the subject gives (bit for bit), while retraining one shard from one slice on; the new version can
itself be unlearned the same way; the served model is its members' aggregate.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workers.modeling.adapters import load_adapter
from workers.modeling.adapters.sharded import ShardedAdapter, sharded_config
from workers.modeling.training import TrainingRecord, retrain_without
from workers.unlearning import MethodUnavailable, UnlearningContext, get_method
from workers.workloads import Workload

SHARDS, SLICES = 4, 5


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def sharded_digits(digits: Workload) -> tuple[Workload, ShardedAdapter, TrainingRecord]:
    workload = digits.sharded(SHARDS, SLICES)
    served, record = workload.trained()
    assert isinstance(served, ShardedAdapter)
    return workload, served, record


def _subject_in_slice(record: TrainingRecord, shard: int, slice_index: int) -> str:
    member = record.shard_record(shard)
    return member.block_subjects[slice_index][0]


def _unlearn(method: str, workload: Workload, served, record, subjects, workdir=None):
    forget, retain = workload.split(subjects)
    context = UnlearningContext(training=record, seed=0, workdir=workdir)
    return get_method(method).unlearn(served, forget, retain, workload.heldout[:20], context)


def test_the_layout_puts_each_subject_in_one_slice_of_one_shard(sharded_digits) -> None:
    workload, served, record = sharded_digits
    assert record.num_shards == SHARDS == served.num_shards
    homes: dict[str, tuple[int, int]] = {}
    for s in range(SHARDS):
        member = record.shard_record(s)
        assert member.num_blocks == SLICES and member.has_checkpoints
        for k, subjects in enumerate(member.block_subjects):
            for subject in subjects:
                assert subject not in homes, f"{subject} trained in {homes[subject]} and {(s, k)}"
                homes[subject] = (s, k)
    assert set(homes) == set(workload.subjects)
    assert sorted(record.sample_ids) == sorted(x.sample_id for x in workload.train)


def test_sisa_equals_retraining_every_shard_bit_for_bit(sharded_digits) -> None:
    workload, served, record = sharded_digits
    subject = _subject_in_slice(record, 2, 1)
    fast = _unlearn("sisa", workload, served, record, [subject])
    exact = _unlearn("retrain", workload, served, record, [subject])
    assert fast.exact and fast.details["shards_retrained"] == 1
    assert fast.details["slices_retrained"] == SLICES - 1  # slice 1 on, of one shard
    assert same_weights(fast.adapter.model, exact.adapter.model)
    # only shard 2 moved, and the forgotten subject's loss rose toward where a model without it lands
    for s, member in enumerate(fast.adapter.members):
        assert same_weights(member.model, served.members[s].model) == (s != 2)
    forget, _ = workload.split([subject])
    assert fast.adapter.per_sample_loss(forget).mean() > served.per_sample_loss(forget).mean()


def test_a_version_sisa_made_can_itself_be_unlearned_by_sisa(sharded_digits, tmp_path: Path) -> None:
    workload, served, record = sharded_digits
    first, second = _subject_in_slice(record, 0, 3), _subject_in_slice(record, 0, 1)
    step = _unlearn("sisa", workload, served, record, [first], workdir=tmp_path / "v2")
    newer = step.details["training_record"]
    assert newer.num_shards == SHARDS and first not in {x for b in newer.block_subjects for x in b}
    kept = [x for x in workload.train if x.subject != first]
    forget = [x for x in kept if x.subject == second]
    retain = [x for x in kept if x.subject != second]
    context = UnlearningContext(training=newer, seed=0)
    again = get_method("sisa").unlearn(step.adapter, forget, retain, workload.heldout[:20], context)
    both = [x.sample_id for x in workload.train if x.subject in (first, second)]
    exact, _ = retrain_without(record, workload.train, both)
    assert same_weights(again.adapter.model, exact.model)


def test_the_served_model_aggregates_its_members(sharded_digits, tmp_path: Path) -> None:
    workload, served, _ = sharded_digits
    samples = workload.heldout[:16]
    batch = served.collate(samples)
    with torch.no_grad():
        mean_logits = torch.stack([m.logits(m.collate(samples)) for m in served.members]).mean(0)
        expected = F.cross_entropy(mean_logits, batch.inputs["y"], reduction="none")
        assert torch.allclose(served.sample_losses(batch), expected, atol=1e-6)
    assert (served.predict(samples) == mean_logits.argmax(-1).numpy()).all()
    served.save(tmp_path / "model")
    assert same_weights(load_adapter(tmp_path / "model").model, served.model)
    twin = served.clone()
    with torch.no_grad():
        next(twin.members[0].model.parameters()).add_(1.0)
    assert not same_weights(twin.model, served.model)  # a clone owns its members


def test_a_sharded_language_model_mixes_its_members_next_token_distributions(bios: Workload) -> None:
    lm = ShardedAdapter.from_config(sharded_config(bios.adapter_kind, bios.adapter_config, 2))
    samples = bios.train[:4]
    with torch.no_grad():
        losses = lm.per_sample_loss(samples)
        per_member = [m.token_log_probs(samples) for m in lm.members]
    for i in range(len(samples)):
        mixture = torch.logsumexp(torch.from_numpy(np.stack([lp[i] for lp in per_member])), 0) - math.log(2)
        assert losses[i] == pytest.approx(float(-mixture.mean()), rel=1e-5)
    assert isinstance(lm.complete("Name:", max_new_tokens=3), str)


def test_methods_that_cannot_run_on_a_sharded_model_say_why(sharded_digits, digits_trained) -> None:
    workload, served, record = sharded_digits
    subject = _subject_in_slice(record, 1, 0)
    for method, reason in [
        ("first_epoch_ascent", "sharded model"),
        ("lora_residual_alignment", "sharded model"),
        ("deepobliviate", "sharded"),
    ]:
        with pytest.raises(MethodUnavailable, match=reason):
            _unlearn(method, workload, served, record, [subject])
    plain, plain_record = digits_trained
    with pytest.raises(MethodUnavailable, match="trained unsharded"):
        _unlearn("sisa", workload, plain, plain_record, [workload.subjects[0]])


def test_more_shards_than_subjects_is_refused_before_training(digits: Workload, tmp_path: Path) -> None:
    from workers.modeling.training import train_with_provenance

    two_subjects = digits.samples_of(digits.subjects[:2])
    model = ShardedAdapter.around(digits.new_adapter(), 4)
    with pytest.raises(ValueError, match="4 shards for 2 data subjects"):
        train_with_provenance(model, two_subjects, digits.recipe, tmp_path / "v1")
    assert not (tmp_path / "v1").exists()
