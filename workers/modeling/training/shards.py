"""SISA's sharded layout (Bourtoule et al. 2021): the subjects are split into S shards, each shard trains one
member of a `ShardedAdapter` on its own, in R slices (the recipe's `num_blocks`), checkpointed after each.

Deleting a subject then touches one shard: its member restarts from the checkpoint before the slice that
held the subject, the other members are kept as they are, and the result equals retraining every member
without the subject bit for bit (each member's run is the deterministic block loop of `loop`, so an
unaffected member retrains to the weights it has). A restart redoes (R - r) / R of one shard, about
1 / (2 S) of the training on average.

Layout: `subject_aligned_blocks` splits the subjects into shards (balanced in size and labels, each
subject's samples in one shard), then each shard into slices. Member s trains with the recipe's seed
derived per shard (`member_recipe`), so members differ in data order as in initialisation.

On disk, a sharded version's record directory holds `shards/<s>/`, one ordinary TrainingRecord per member
(checkpoints, model), beside the version's own record, whose blocks are the members' slices in shard order.
Members record no first-epoch gradients: first_epoch_ascent does not run on sharded models.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from app.registry.recipe import TrainingRecipe
from workers.modeling.adapters.sharded import ShardedAdapter
from workers.modeling.base import ModelAdapter, Sample, fingerprint_samples
from workers.modeling.training.determinism import derive_seed
from workers.modeling.training.layout import subject_aligned_blocks
from workers.modeling.training.loop import BlockRun, Progress, train_blocks
from workers.modeling.training.record import MODEL_DIR, TrainingRecord

SHARDS_DIR = "shards"


def shard_layout(samples: Sequence[Sample], shards: int, seed: int) -> list[list[Sample]]:
    """Which samples each shard trains on: every subject's samples in one shard."""
    subjects = len({s.subject for s in samples})
    if subjects < shards:
        raise ValueError(
            f"{shards} shards for {subjects} data subjects: every shard needs a subject of its own"
        )
    return subject_aligned_blocks(samples, shards, derive_seed(seed, "shards"))


def member_recipe(recipe: TrainingRecipe, shard: int) -> TrainingRecipe:
    """Member `shard`'s recipe: the version's, with its seed derived per shard and no gradient record."""
    return recipe.replace(seed=derive_seed(recipe.seed, "shard", shard), record_first_epoch_grads=False)


def shard_directory(workdir: Path | str, shard: int) -> Path:
    return Path(workdir) / SHARDS_DIR / f"{shard:02d}"


def _scaled(progress: Progress | None, shard: int, shards: int) -> Progress | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(
        (shard + fraction) / shards, f"shard {shard + 1}/{shards}: {message}"
    )


def train_sharded_with_provenance(
    adapter: ShardedAdapter,
    samples: Sequence[Sample],
    recipe: TrainingRecipe,
    workdir: Path | str,
    progress: Progress | None = None,
) -> TrainingRecord:
    """Train every member of `adapter` (in place) on its shard, recording each, and the version under
    `workdir`."""
    from workers.modeling.training.runs import train_with_provenance

    started = time.perf_counter()
    shards = shard_layout(samples, adapter.num_shards, recipe.seed)
    records = [
        train_with_provenance(
            member,
            shards[s],
            member_recipe(recipe, s),
            shard_directory(workdir, s),
            _scaled(progress, s, adapter.num_shards),
        )  # fmt: skip
        for s, member in enumerate(adapter.members)
    ]
    return write_sharded_record(workdir, recipe, adapter, records, samples, time.perf_counter() - started)


def train_sharded_fresh(
    adapter: ShardedAdapter,
    samples: Sequence[Sample],
    recipe: TrainingRecipe,
    progress: Progress | None = None,
) -> list[BlockRun]:
    """Train every member of `adapter` (in place) on its shard, recording nothing."""
    runs = []
    shards = shard_layout(samples, adapter.num_shards, recipe.seed)
    for s, (member, shard) in enumerate(zip(adapter.members, shards, strict=True)):
        own = member_recipe(recipe, s)
        blocks = subject_aligned_blocks(shard, own.num_blocks, own.seed)
        runs.append(train_blocks(member, blocks, own, progress=_scaled(progress, s, adapter.num_shards)))
    return runs


def retrain_sharded_without(
    record: TrainingRecord,
    samples: Sequence[Sample],
    forget_ids: Sequence[str],
    *,
    recipe: TrainingRecipe | None = None,
    workdir: Path | str | None = None,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> tuple[ShardedAdapter, TrainingRecord | BlockRun]:
    """Exact retraining of every member of a sharded version without `forget_ids` (see `retrain_without`)."""
    from workers.modeling.training.runs import retrain_without

    started = time.perf_counter()
    recipe = recipe or record.recipe
    members, outcomes = [], []
    for s in range(record.num_shards):
        member, outcome = retrain_without(
            record.shard_record(s), samples, forget_ids,
            recipe=member_recipe(recipe, s),
            workdir=shard_directory(workdir, s) if workdir is not None else None,
            device=device, progress=_scaled(progress, s, record.num_shards),
        )  # fmt: skip
        members.append(member)
        outcomes.append(outcome)
    model = ShardedAdapter(members, record.adapter_config)
    if workdir is not None:
        seconds = time.perf_counter() - started
        return model, write_sharded_record(workdir, recipe, model, outcomes, samples, seconds)
    return model, merged_runs(outcomes)


def restart_affected_shards(
    record: TrainingRecord,
    served: ShardedAdapter,
    samples: Sequence[Sample],
    forget_ids: Sequence[str],
    *,
    workdir: Path | str | None = None,
    progress: Progress | None = None,
) -> tuple[ShardedAdapter, list[dict[str, Any]], TrainingRecord | None]:
    """SISA's unlearning: the members whose shard holds a forget sample restart from the checkpoint before
    their first affected slice; the others are `served`'s. Returns the model, one entry per shard (what was
    retrained) and, with `workdir`, the new version's record."""
    from workers.modeling.training.runs import resume_with_provenance

    started = time.perf_counter()
    forget = set(forget_ids)
    subs = [record.shard_record(s) for s in range(record.num_shards)]
    affected = [s for s, sub in enumerate(subs) if forget & set(sub.sample_ids)]
    members: list[ModelAdapter] = []
    records: list[TrainingRecord] = []
    shards: list[dict[str, Any]] = []
    for s, sub in enumerate(subs):
        if s not in affected:
            members.append(served.members[s].clone())
            if workdir is not None:
                target = shard_directory(workdir, s)
                shutil.copytree(sub.directory, target, dirs_exist_ok=True)
                records.append(TrainingRecord.load(target))
            shards.append({"shard": s, "retrained_slices": 0, "slices": sub.num_blocks, "seconds": 0.0})
            continue
        first = sub.first_affected_block(list(forget))
        member = sub.new_adapter(device=served.device)
        optimizer_state = sub.restore(member, first)
        blocks = sub.blocks_as_samples(samples, exclude=list(forget))
        position = affected.index(s)
        step = _scaled(progress, position, len(affected))
        shard_started = time.perf_counter()
        if workdir is not None:
            records.append(
                resume_with_provenance(
                    sub, member, blocks, first, optimizer_state, shard_directory(workdir, s), step
                )
            )
        else:
            train_blocks(member, blocks, sub.recipe, first, optimizer_state, progress=step)
        members.append(member)
        shards.append(
            {
                "shard": s,
                "retrained_slices": sub.num_blocks - first,
                "slices": sub.num_blocks,
                "first_affected_slice": first,
                "seconds": time.perf_counter() - shard_started,
            }
        )
    model = served.with_members(members)
    new_record = None
    if workdir is not None:
        seconds = time.perf_counter() - started
        new_record = write_sharded_record(workdir, record.recipe, model, records, samples, seconds)
    return model, shards, new_record


def write_sharded_record(
    workdir: Path | str,
    recipe: TrainingRecipe,
    adapter: ShardedAdapter,
    members: Sequence[TrainingRecord],
    samples: Sequence[Sample],
    seconds: float,
) -> TrainingRecord:
    """The version's record over its members' (blocks in shard order) and the ensemble under MODEL_DIR;
    `samples` holds at least the samples the members trained on (the fingerprint covers only those)."""
    workdir = Path(workdir)
    adapter.save(workdir / MODEL_DIR)
    blocks, subjects, losses, block_seconds, order = [], [], [], [], []
    trained = {sid for member in members for sid in member.sample_ids}
    for member in members:
        offset = len(blocks)
        blocks += member.blocks
        subjects += member.block_subjects
        losses += member.block_losses
        block_seconds += list(member.timings.get("block_seconds", []))
        order += [{**visit, "block": visit["block"] + offset} for visit in member.order]
    record = TrainingRecord(
        directory=workdir,
        recipe=recipe,
        adapter_kind=adapter.kind,
        adapter_config=adapter.config(),
        blocks=blocks,
        order=order,
        fingerprint=fingerprint_samples([s for s in samples if s.sample_id in trained]),
        block_subjects=subjects,
        block_losses=losses,
        timings={"total_seconds": seconds, "block_seconds": block_seconds},
        shards=[str(m.directory.relative_to(workdir)) for m in members],
    )
    record.save()
    return record


def merged_runs(runs: Sequence[TrainingRecord | BlockRun]) -> BlockRun:
    """One BlockRun over the members' (blocks in shard order), for callers that report per block."""
    merged = BlockRun(optimizer=runs[0].optimizer)  # type: ignore[union-attr]
    for run in runs:
        assert isinstance(run, BlockRun)
        offset = len(merged.trained_blocks)
        merged.trained_blocks += [offset + k for k in range(len(run.trained_blocks))]
        merged.block_seconds += run.block_seconds
        merged.block_losses += run.block_losses
        merged.order += [{**visit, "block": visit["block"] + offset} for visit in run.order]
    return merged
