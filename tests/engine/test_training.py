"""Training with provenance: subject-aligned blocks, exact order, checkpoints, first-epoch gradients."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from workers.modeling.base import fingerprint_samples
from workers.modeling.training import (
    TrainingRecipe,
    TrainingRecord,
    make_optimizer,
    subject_aligned_blocks,
    train_blocks,
    train_with_provenance,
)
from workers.workloads import Workload

pytestmark = pytest.mark.ml

TINY = TrainingRecipe(epochs=2, batch_size=16, lr=3e-3, num_blocks=5, seed=3, record_first_epoch_grads=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name].cpu(), b[name].cpu()), name


@pytest.fixture(scope="module")
def tiny_run(digits: Workload, tmp_path_factory: pytest.TempPathFactory):
    """A short provenance run on 300 digits samples, trained in this process (for bit-exact comparisons)."""
    samples = digits.train[:300]
    adapter = digits.new_adapter()
    record = train_with_provenance(adapter, samples, TINY, tmp_path_factory.mktemp("tiny"))
    return samples, adapter, record


def test_blocks_hold_each_subject_once_and_are_balanced(digits: Workload) -> None:
    blocks = subject_aligned_blocks(digits.train, 20, seed=0)
    owner: dict[str, set[int]] = {}
    for k, block in enumerate(blocks):
        for sample in block:
            owner.setdefault(sample.subject, set()).add(k)
    assert all(len(ks) == 1 for ks in owner.values())
    assert sorted(s.sample_id for b in blocks for s in b) == sorted(s.sample_id for s in digits.train)
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= max(Counter(s.subject for s in digits.train).values())


def test_block_layout_is_a_function_of_the_seed(digits: Workload) -> None:
    def ids(seed: int) -> list[list[str]]:
        return [[s.sample_id for s in b] for b in subject_aligned_blocks(digits.train, 10, seed)]

    assert ids(1) == ids(1)
    assert ids(1) != ids(2)


def test_record_lists_exactly_the_training_samples_in_order(tiny_run) -> None:
    samples, _, record = tiny_run
    assert sorted(record.sample_ids) == sorted(s.sample_id for s in samples)
    assert record.fingerprint == fingerprint_samples(samples)
    visits = Counter(record.training_order())
    assert set(visits.values()) == {TINY.epochs}
    # each (block, epoch) visit holds exactly that block's samples
    for visit in record.order:
        assert sorted(visit["sample_ids"]) == sorted(record.blocks[visit["block"]])
    blocks_in_order = [v["block"] for v in record.order]
    assert blocks_in_order == sorted(blocks_in_order)


def test_record_round_trips_through_its_directory(tiny_run) -> None:
    _, _, record = tiny_run
    loaded = TrainingRecord.load(record.directory)
    assert loaded.blocks == record.blocks
    assert loaded.order == record.order
    assert loaded.recipe == record.recipe
    assert loaded.adapter_config == record.adapter_config


def test_checkpoints_bracket_the_run(tiny_run, digits: Workload) -> None:
    _, adapter, record = tiny_run
    initial, optimizer_state = record.checkpoint(0)
    assert_same_weights(initial, digits.new_adapter().state_dict())
    assert optimizer_state["state"] == {}
    final, _ = record.checkpoint(record.num_blocks)
    assert_same_weights(final, adapter.state_dict())
    assert_same_weights(record.final_adapter().state_dict(), adapter.state_dict())
    with pytest.raises(IndexError):
        record.checkpoint(record.num_blocks + 1)


def test_training_is_reproducible(digits: Workload, tmp_path: Path) -> None:
    samples = digits.train[:200]
    recipe = TINY.replace(record_first_epoch_grads=False, record_block_checkpoints=False)
    first, second = digits.new_adapter(), digits.new_adapter()
    train_with_provenance(first, samples, recipe, tmp_path / "a")
    train_with_provenance(second, samples, recipe, tmp_path / "b")
    assert_same_weights(first.state_dict(), second.state_dict())
    third = digits.new_adapter()
    train_with_provenance(third, samples, recipe.replace(seed=recipe.seed + 1), tmp_path / "c")
    assert not torch.equal(first.state_dict()["head.weight"], third.state_dict()["head.weight"])


def test_resuming_from_a_checkpoint_reproduces_the_run_bit_for_bit(tiny_run) -> None:
    samples, adapter, record = tiny_run
    resumed = record.new_adapter()
    optimizer_state = record.restore(resumed, 2)
    run = train_blocks(resumed, record.blocks_as_samples(samples), record.recipe, 2, optimizer_state)
    assert run.trained_blocks == list(range(2, record.num_blocks))
    assert_same_weights(resumed.state_dict(), adapter.state_dict())


def test_block_hook_stops_the_run_early(tiny_run) -> None:
    samples, _, record = tiny_run
    resumed = record.new_adapter()
    optimizer_state = record.restore(resumed, 1)
    run = train_blocks(
        resumed,
        record.blocks_as_samples(samples),
        record.recipe,
        1,
        optimizer_state,
        on_block_end=lambda k, *_: k == 2,
    )
    assert run.trained_blocks == [1, 2] and run.stopped_early
    assert_same_weights(resumed.state_dict(), record.checkpoint(3)[0])


def test_first_epoch_gradient_is_the_samples_own_gradient_at_that_point(tiny_run) -> None:
    samples, _, record = tiny_run
    by_id = {s.sample_id: s for s in samples}
    assert record.has_first_epoch_grads
    for k in (0, 3):
        first_batch = next(v for v in record.order if v["block"] == k and v["epoch"] == 0)
        sample = by_id[first_batch["sample_ids"][0]]
        model = record.new_adapter()
        record.restore(model, k)  # the weights the first batch of block k saw
        loss = model.sample_losses(model.collate([sample])).sum()
        params = model.trainable_parameters()
        expected = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
        recorded = record.first_epoch_gradient(sample.sample_id)
        assert recorded.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(recorded[name], expected[name], rtol=1e-4, atol=1e-6)
    assert len({sid for sid in record.sample_ids if record.first_epoch_gradient(sid)}) == len(samples)


def test_missing_provenance_is_reported_clearly(digits: Workload, tmp_path: Path) -> None:
    recipe = TINY.replace(record_first_epoch_grads=False, record_block_checkpoints=False)
    record = train_with_provenance(digits.new_adapter(), digits.train[:50], recipe, tmp_path)
    with pytest.raises(FileNotFoundError, match="without block checkpoints"):
        record.checkpoint(0)
    with pytest.raises(FileNotFoundError, match="without recording first-epoch gradients"):
        record.first_epoch_gradient(digits.train[0].sample_id)
    with pytest.raises(KeyError, match="missing"):
        record.blocks_as_samples(digits.train[:10])


def test_unknown_optimizer_is_refused(digits: Workload) -> None:
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(digits.new_adapter(), TINY.replace(optimizer="lbfgs-ish"))


def test_models_trained_like_a_version_follow_their_seed(tiny_run) -> None:
    samples, adapter, record = tiny_run
    half = samples[: len(samples) // 2]
    first, again = record.train_like(half, seed=11), record.train_like(half, seed=11)
    assert_same_weights(first.state_dict(), again.state_dict())
    other = record.train_like(half, seed=12)
    assert not torch.equal(first.state_dict()["head.weight"], other.state_dict()["head.weight"])
    assert first.config() == {**adapter.config(), "init_seed": 11}
    # trained: its own samples fit better than the samples it never saw
    assert first.per_sample_loss(half).mean() < first.per_sample_loss(samples[len(half) :]).mean()


def test_record_key_changes_with_the_recipe(tiny_run) -> None:
    _, _, record = tiny_run
    changed = TrainingRecord.load(record.directory)
    changed.recipe = record.recipe.replace(lr=record.recipe.lr * 2)
    assert TrainingRecord.load(record.directory).key == record.key != changed.key
