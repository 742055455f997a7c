"""`retrain`: exact unlearning by replaying the served version's recipe and layout without the forget set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from workers.modeling.training import TrainingRecipe, train_blocks, train_with_provenance
from workers.unlearning import MethodUnavailable, UnlearningContext, unlearn
from workers.workloads import Workload
from workers.workloads.digits import backdoor_success, clean_heldout

pytestmark = pytest.mark.ml

TINY = TrainingRecipe(epochs=2, batch_size=16, lr=3e-3, num_blocks=6, seed=5)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name].cpu(), b[name].cpu()), name


@pytest.fixture(scope="module")
def tiny(digits: Workload, tmp_path_factory: pytest.TempPathFactory):
    """A served version trained in this process on 360 samples, and a deletion of two subjects."""
    samples = digits.train[:360]
    served = digits.new_adapter()
    record = train_with_provenance(served, samples, TINY, tmp_path_factory.mktemp("served"))
    subjects = sorted({s.subject for s in samples})[3:5]
    forget = [s for s in samples if s.subject in subjects]
    retain = [s for s in samples if s.subject not in subjects]
    return served, record, forget, retain


def test_retrain_equals_restarting_from_the_first_affected_block(tiny) -> None:
    served, record, forget, retain = tiny
    result = unlearn("retrain", served, forget, retain, [], UnlearningContext(training=record))
    assert result.exact and result.method == "retrain"
    forget_ids = [s.sample_id for s in forget]
    d = record.first_affected_block(forget_ids)
    assert result.details["first_affected_block"] == d
    restarted = record.new_adapter()
    optimizer_state = record.restore(restarted, d)
    train_blocks(
        restarted, record.blocks_as_samples(retain, exclude=forget_ids), record.recipe, d, optimizer_state
    )
    assert_same_weights(result.adapter.state_dict(), restarted.state_dict())
    assert not torch.equal(result.adapter.state_dict()["head.weight"], served.state_dict()["head.weight"])
    assert result.details["trained_samples"] == len(retain)


def test_retrain_is_reproducible_and_leaves_the_served_model_alone(tiny) -> None:
    served, record, forget, retain = tiny
    before = served.state_dict()
    first = unlearn("retrain", served, forget, retain, [], UnlearningContext(training=record))
    second = unlearn("retrain", served, forget, retain, [], UnlearningContext(training=record))
    assert_same_weights(first.adapter.state_dict(), second.adapter.state_dict())
    assert_same_weights(served.state_dict(), before)


def test_retrain_removes_a_backdoor_subject(digits_trained, digits: Workload) -> None:
    served, record = digits_trained
    subject = digits.forget_subjects(1, seed=1)[0]
    assert subject in digits.backdoors
    forget, retain = digits.split([subject])
    progress: list[float] = []
    result = unlearn(
        "retrain",
        served,
        forget,
        retain,
        digits.heldout,
        UnlearningContext(training=record, progress=lambda f, _m: progress.append(f)),
    )
    clean = clean_heldout(digits)
    backdoor = digits.backdoors[subject]
    assert backdoor_success(result.adapter, backdoor, clean) < backdoor_success(served, backdoor, clean) - 0.1
    assert result.adapter.per_sample_loss(forget).mean() > served.per_sample_loss(forget).mean() + 1.0
    labels = np.array([s.label for s in clean])
    assert np.mean(result.adapter.predict(clean) == labels) > np.mean(served.predict(clean) == labels) - 0.05
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert len(result.steps) == record.num_blocks and result.seconds > 0


def test_retrain_can_record_provenance_for_the_new_version(tiny, tmp_path: Path) -> None:
    served, record, forget, retain = tiny
    result = unlearn(
        "retrain",
        served,
        forget,
        retain,
        [],
        UnlearningContext(training=record, workdir=tmp_path),
    )
    new_record = result.details["training_record"]
    forget_ids = {s.sample_id for s in forget}
    assert new_record.blocks == [[sid for sid in block if sid not in forget_ids] for block in record.blocks]
    assert_same_weights(new_record.checkpoint(new_record.num_blocks)[0], result.adapter.state_dict())


def test_retrain_refuses_a_partial_retain_set(tiny) -> None:
    served, record, forget, retain = tiny
    with pytest.raises(MethodUnavailable, match="full retain set"):
        unlearn("retrain", served, forget, retain[:-5], [], UnlearningContext(training=record))


def test_a_model_trained_elsewhere_needs_a_recipe(tiny) -> None:
    served, _, forget, retain = tiny
    with pytest.raises(MethodUnavailable, match="no training record"):
        unlearn("retrain", served, forget, retain, [], UnlearningContext(training=None))
    result = unlearn(
        "retrain",
        served,
        forget,
        retain,
        [],
        UnlearningContext(training=None),
        config={"recipe": TINY.to_dict()},
    )
    assert result.details["trained_samples"] == len(retain)
    untrained = type(served).from_config(served.config())
    assert result.adapter.per_sample_loss(retain).mean() < untrained.per_sample_loss(retain).mean() - 0.1
