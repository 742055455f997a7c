"""The gate's references: split by subject, once per lineage, reused under a refresh rule, own seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workers.modeling.base import Sample
from workers.verification.references import (
    GATE,
    TARGETING,
    balanced_membership,
    check_candidate_seed,
    ensure_references,
    plan_references,
    reference_blocks,
)

pytestmark = pytest.mark.ml


def test_every_subject_is_in_exactly_half_of_the_references() -> None:
    subjects = [f"s{i // 3}" for i in range(30)]  # 10 subjects, 3 samples each
    mask = balanced_membership(subjects, 16, seed=0)
    assert mask.shape == (16, 30)
    assert (mask.sum(axis=0) == 8).all()
    for i in range(0, 30, 3):  # a subject's samples are together: all IN or all OUT
        assert (mask[:, i] == mask[:, i + 1]).all() and (mask[:, i] == mask[:, i + 2]).all()
    # and every reference holds half the subjects (of an odd number, one more or one less)
    assert (mask.sum(axis=1) == 15).all()
    odd = balanced_membership([f"s{i}" for i in range(61)], 16, seed=3)
    assert (odd.sum(axis=0) == 8).all() and set(odd.sum(axis=1)) <= {30, 31}


def test_a_reference_on_half_the_subjects_gets_half_the_blocks() -> None:
    """Blocks of the served version's size: the same subjects per block, not half as many."""
    half = [Sample(f"s{i}/0", f"s{i}", label=0) for i in range(30)]
    assert reference_blocks(10, 60, half) == 5
    assert reference_blocks(10, 60, half[:1]) == 1
    assert reference_blocks(10, 60, half * 2) == 5  # subjects count, not samples
    assert reference_blocks(10, 30, half) == 10  # a replica keeps the served count
    assert reference_blocks(10, 0, half) == 10  # no recorded layout: the served count


class RecordingTrainer:
    """Stands in for training: remembers what it was asked to train on, with which seed."""

    def __init__(self, served) -> None:
        self.served = served
        self.calls: list[tuple[int, int]] = []  # (samples, seed)

    def __call__(self, samples, seed):
        self.calls.append((len(samples), seed))
        return self.served.clone()


def subjects_of(samples) -> list[str]:
    return sorted({s.subject for s in samples})


def test_references_are_built_once_per_lineage_and_reused_under_the_refresh_rule(
    digits, digits_trained, tmp_path: Path
) -> None:
    served, _ = digits_trained
    names = subjects_of(digits.train)[:40]
    training = [s for s in digits.train if s.subject in set(names)]
    trainer = RecordingTrainer(served)
    plan = plan_references(4, 1, 0)

    first = ensure_references(tmp_path, "lineage-a", served, training, trainer, plan, refresh_share=0.1)
    assert len(trainer.calls) == 5 and first.trained_now and first.generation == 0 and not first.reused
    # a reference sees the samples of half the subjects, a replica all of them
    assert all(abs(n - len(training) / 2) < len(training) / 4 for n, _ in trainer.calls[:4])
    assert trainer.calls[4][0] == len(training)
    losses = first.losses(training[:10])

    # the next version lacks 2 of 40 subjects (5 % <= 10 %): the same models, no training
    later = [s for s in training if s.subject not in set(names[:2])]
    again = ensure_references(tmp_path, "lineage-a", served, later, trainer, plan, refresh_share=0.1)
    assert len(trainer.calls) == 5 and not again.trained_now and again.reused and again.generation == 0
    assert again.deleted_share == pytest.approx(2 / 40)
    assert np.allclose(again.losses(training[:10]), losses)

    # 5 of 40 deleted (12.5 % > 10 %): a new generation on the version's own data
    fewer = [s for s in training if s.subject not in set(names[:5])]
    fresh = ensure_references(tmp_path, "lineage-a", served, fewer, trainer, plan, refresh_share=0.1)
    assert fresh.generation == 1 and fresh.trained_now and len(trainer.calls) == 10
    assert fresh.subjects == subjects_of(fewer)
    # a subject the set never saw: a new generation too
    grown = [*fewer, *[s for s in digits.train if s.subject == subjects_of(digits.train)[45]]]
    assert ensure_references(tmp_path, "lineage-a", served, grown, trainer, plan).generation == 2
    # another lineage never shares them
    ensure_references(tmp_path, "lineage-b", served, training, trainer, plan)
    assert len(trainer.calls) == 20


def test_a_new_reference_scheme_never_reuses_an_older_schemes_directory(
    digits, digits_trained, tmp_path: Path
) -> None:
    """Its models and cached signals belong to the older scheme: a new generation is numbered past it."""
    served, _ = digits_trained
    training = [s for s in digits.train if s.subject in set(subjects_of(digits.train)[:20])]
    plan = plan_references(4, 1, 0)
    old = tmp_path / "references" / "lineage" / "gate-g0"
    old.mkdir(parents=True)
    (old / "manifest.json").write_text(json.dumps({"scheme": "older", "generation": 0}))
    refs = ensure_references(tmp_path, "lineage", served, training, RecordingTrainer(served), plan)
    assert refs.generation == 1 and refs.directory.name == "gate-g1"


def test_targeting_references_are_kept_apart_with_seeds_the_gate_never_uses(
    digits, digits_trained, tmp_path: Path
) -> None:
    served, _ = digits_trained
    training = [s for s in digits.train if s.subject in set(subjects_of(digits.train)[:20])]
    plan = plan_references(4, 2, 0)
    gate_trainer, targeting_trainer = RecordingTrainer(served), RecordingTrainer(served)
    gate = ensure_references(tmp_path, "lineage", served, training, gate_trainer, plan, purpose=GATE)
    aim = ensure_references(tmp_path, "lineage", served, training, targeting_trainer, plan, purpose=TARGETING)
    assert gate.directory != aim.directory and len(targeting_trainer.calls) == 6
    gate_seeds = {seed for _, seed in gate_trainer.calls}
    assert not gate_seeds & {seed for _, seed in targeting_trainer.calls}
    for seed in gate_seeds:
        with pytest.raises(ValueError, match="reserved for the gate references"):
            check_candidate_seed(seed)
    check_candidate_seed(70_105)  # the benchmark's candidate seeds are free


def test_a_cost_limit_shrinks_the_set_and_says_so() -> None:
    plan = plan_references(16, 4, limit_trainings=6)
    assert plan.cost_trainings <= 6 and plan.limited
    assert plan.replicas == 2 and plan.k == 8
    assert "each subject OUT of 4, asked 8" in plan.note()
    assert plan_references(16, 4, 0).note() is None
    tiny = plan_references(16, 4, limit_trainings=1)
    assert (tiny.k, tiny.replicas) == (2, 0)


def test_reusing_the_lineage_references_for_a_later_version_gives_the_verdicts_of_fresh_ones(
    digits, digits_trained, tmp_path: Path
) -> None:
    """Version 2 of the lineage was retrained without subject A; now subject B is deleted from it. Judged with
    the lineage's references (built on version 1: A is IN half of them) and with references built afresh on
    version 2's data, the untouched version 2 and an exact retrain of a fresh seed get the same verdicts, and
    the nulls of exact retrains agree within a fraction of their spread."""
    from workers.unlearning.base import UnlearningResult
    from workers.unlearning.evaluation import scenario
    from workers.verification.gate import Policy
    from workers.verification.probes import probes_for_workload
    from workers.verification.references import trainer_from_record
    from workers.verification.report import verify
    from workers.verification.workload_case import untouched
    from workers.workloads import cache_dir

    _, record = digits_trained
    deleted_before, now = digits.forget_subjects(3)[2], digits.forget_subjects(2)[1]  # A, then B (memorised)
    version_2 = digits.retrained([deleted_before])
    training = [s for s in digits.train if s.subject != deleted_before]
    case = scenario(digits, subjects=[now])
    retain = [s for s in training if s.subject != now]
    fresh_seed = record.train_like(retain, seed=60_100)
    candidates = {
        "untouched": untouched(version_2),
        "exact retrain": UnlearningResult(fresh_seed, "retrain", exact=True, seconds=0.0),
    }
    verdicts, nulls = {}, {}
    for label, directory in (("lineage", cache_dir("verification")), ("fresh", tmp_path)):
        for name, candidate in candidates.items():
            report = verify(
                version_2,
                candidate,
                None,
                case.forget,
                retain,
                case.test,
                probes_for_workload(digits, [now], case.test),
                Policy(trust_exact=False),
                directory,
                training_samples=training,
                reference_trainer=trainer_from_record(record),
                lineage=digits.trained_dir().name,
            )
            assert report.references["reused_from_earlier_version"] is (label == "lineage")
            verdicts[label, name] = report.verdict.verdict
            for key in ("lira.per_example.null", "backdoor.excess.null"):
                nulls[label, key] = report.results["mia" if key.startswith("lira") else "backdoor"].values[
                    key
                ]
    assert verdicts["lineage", "untouched"] == verdicts["fresh", "untouched"] == "fail"
    assert verdicts["lineage", "exact retrain"] == verdicts["fresh", "exact retrain"] == "pass"
    for key in ("lira.per_example.null", "backdoor.excess.null"):
        reused, fresh = nulls["lineage", key], nulls["fresh", key]
        assert abs(reused.mean - fresh.mean) < 0.5 * max(reused.sd, fresh.sd), key


def test_references_too_dear_for_the_policy_fall_back_and_the_report_says_so(digits_trained) -> None:
    """With a cost limit of 3 trainings the gate trains what fits (4 references, 1 replica), judges with it,
    and says in the report that it did: never silently. Two OUT references per subject give wide bounds
    (little power), never a pass for the untouched model."""
    from workers.verification.gate import Policy
    from workers.verification.workload_case import run_case

    case = run_case("digits", "none", 2, policy=Policy(max_reference_trainings=3), with_reference=False)
    report = case.report
    assert report.references["subject_half_references"] == 4 and report.references["seed_replicas"] == 1
    assert "cost limit" in report.references["cost_limit"]
    assert any("limited by the policy's cost limit" in item for item in report.not_checked)
    assert report.verdict.verdict in ("fail", "inconclusive")
    assert report.results["mia"].values["lira.per_example.null"].min_draws == 2
