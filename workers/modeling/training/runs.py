"""The ways to train a model: recording provenance, fresh without a record, or retraining a recorded
version without some of its samples."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from app.registry.recipe import TrainingRecipe
from workers.modeling.adapters.sharded import ShardedAdapter
from workers.modeling.base import ModelAdapter, Sample, fingerprint_samples
from workers.modeling.training.checkpoints import CHECKPOINT_DIR, CheckpointWriter
from workers.modeling.training.gradients import GRADIENTS_FILE, GradientRecorder
from workers.modeling.training.layout import subject_aligned_blocks
from workers.modeling.training.loop import BlockRun, Progress, train_blocks
from workers.modeling.training.optimizer import make_optimizer
from workers.modeling.training.record import MODEL_DIR, TrainingRecord
from workers.modeling.training.shards import (
    retrain_sharded_without,
    train_sharded_fresh,
    train_sharded_with_provenance,
)


def train_with_provenance(
    adapter: ModelAdapter,
    samples: Sequence[Sample],
    recipe: TrainingRecipe,
    workdir: Path | str,
    progress: Progress | None = None,
    blocks: Sequence[Sequence[Sample]] | None = None,
) -> TrainingRecord:
    """Train `adapter` (in place, from its current weights) on `samples` and record how, under `workdir`.

    `blocks` imposes a layout (a retrain keeps its parent's layout minus the forget samples); by default
    the samples are laid out with `subject_aligned_blocks`. A sharded model trains member by member
    (`shards.train_sharded_with_provenance`).
    """
    if isinstance(adapter, ShardedAdapter):
        if blocks is not None:
            raise ValueError("a sharded model lays out its own shards; retrain it with retrain_without")
        return train_sharded_with_provenance(adapter, samples, recipe, workdir, progress)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if blocks is None:
        blocks = subject_aligned_blocks(samples, recipe.num_blocks, recipe.seed)
    blocks = [list(block) for block in blocks]
    checkpoints = (
        CheckpointWriter(workdir / CHECKPOINT_DIR, adapter) if recipe.record_block_checkpoints else None
    )
    gradients = GradientRecorder() if recipe.record_first_epoch_grads else None
    if checkpoints is not None:
        checkpoints.write(0, adapter, make_optimizer(adapter, recipe))

    def after_block(k: int, model: ModelAdapter, optimizer: torch.optim.Optimizer) -> None:
        if checkpoints is not None:
            checkpoints.write(k + 1, model, optimizer)

    run = train_blocks(
        adapter,
        blocks,
        recipe,
        on_block_end=after_block,
        record_gradient=gradients.add if gradients is not None else None,
        progress=progress,
    )
    adapter.save(workdir / MODEL_DIR)
    if gradients is not None:
        gradients.save(workdir / GRADIENTS_FILE)
    record = TrainingRecord(
        directory=workdir,
        recipe=recipe,
        adapter_kind=adapter.kind,
        adapter_config=adapter.config(),
        blocks=[[s.sample_id for s in block] for block in blocks],
        order=run.order,
        fingerprint=fingerprint_samples(samples),
        block_subjects=[sorted({s.subject for s in block}) for block in blocks],
        block_losses=run.block_losses,
        timings={
            "total_seconds": time.perf_counter() - started,
            "block_seconds": run.block_seconds,
        },
    )
    record.save()
    return record


def train_fresh(
    adapter_kind: str,
    adapter_config: Mapping[str, Any],
    samples: Sequence[Sample],
    recipe: TrainingRecipe,
    *,
    seed: int | None = None,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> ModelAdapter:
    """A new model of the given architecture trained on `samples` with `recipe`, recording nothing.

    `seed` (when given) replaces both the init seed and the recipe's seed: reference models for membership
    inference differ from the served one only in randomness and data.
    """
    from workers.modeling.adapters import new_adapter

    config = dict(adapter_config)
    if seed is not None:
        config["init_seed"] = seed
        recipe = recipe.replace(seed=seed)
    adapter = new_adapter(adapter_kind, config, device=device)
    if isinstance(adapter, ShardedAdapter):
        train_sharded_fresh(adapter, samples, recipe, progress)
        return adapter
    blocks = subject_aligned_blocks(samples, recipe.num_blocks, recipe.seed)
    train_blocks(adapter, blocks, recipe, progress=progress)
    return adapter


def retrain_without(
    record: TrainingRecord,
    samples: Sequence[Sample],
    forget_ids: Sequence[str],
    *,
    recipe: TrainingRecipe | None = None,
    workdir: Path | str | None = None,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> tuple[ModelAdapter, TrainingRecord | BlockRun]:
    """Exact retraining of `record`'s version without `forget_ids`: same init, recipe and block layout.

    `samples` must hold every training sample that is kept (looked up by id; KeyError names the missing).
    With `workdir` the retrain records its own provenance there and returns its TrainingRecord, otherwise
    the BlockRun of a plain `train_blocks`. A sharded version retrains every member.
    """
    if record.num_shards:
        return retrain_sharded_without(
            record, samples, forget_ids, recipe=recipe, workdir=workdir, device=device, progress=progress
        )
    recipe = recipe or record.recipe
    blocks = record.blocks_as_samples(samples, exclude=forget_ids)
    model = record.new_adapter(device=device)
    if workdir is not None:
        kept = [s for block in blocks for s in block]
        return model, train_with_provenance(model, kept, recipe, workdir, progress, blocks)
    return model, train_blocks(model, blocks, recipe, progress=progress)


def resume_with_provenance(
    record: TrainingRecord,
    adapter: ModelAdapter,
    blocks: Sequence[Sequence[Sample]],
    start_block: int,
    optimizer_state: Mapping[str, Any],
    workdir: Path | str,
    progress: Progress | None = None,
) -> TrainingRecord:
    """Continue `record`'s run from checkpoint `start_block` (loaded into `adapter`) on `blocks` (its layout,
    some samples left out), recording the new run under `workdir` as `train_with_provenance` would have:
    checkpoints up to `start_block` are the old run's (the same training), later ones the new run's.
    """
    if record.recipe.record_first_epoch_grads:
        raise ValueError("a restart cannot record first-epoch gradients of the blocks it does not train")
    workdir = Path(workdir)
    started = time.perf_counter()
    checkpoints = CheckpointWriter(workdir / CHECKPOINT_DIR, adapter)
    for k in range(start_block + 1):
        for name in (f"model_{k:04d}.safetensors", f"optimizer_{k:04d}.pt"):
            shutil.copy2(record.directory / CHECKPOINT_DIR / name, workdir / CHECKPOINT_DIR / name)

    def after_block(k: int, model: ModelAdapter, optimizer: torch.optim.Optimizer) -> None:
        checkpoints.write(k + 1, model, optimizer)

    blocks = [list(block) for block in blocks]
    run = train_blocks(
        adapter,
        blocks,
        record.recipe,
        start_block,
        optimizer_state,
        on_block_end=after_block,
        progress=progress,
    )
    adapter.save(workdir / MODEL_DIR)
    kept = [s for block in blocks for s in block]
    old_seconds = list(record.timings.get("block_seconds", []))[:start_block]
    new = TrainingRecord(
        directory=workdir,
        recipe=record.recipe,
        adapter_kind=record.adapter_kind,
        adapter_config=record.adapter_config,
        blocks=[[s.sample_id for s in block] for block in blocks],
        order=[visit for visit in record.order if visit["block"] < start_block] + run.order,
        fingerprint=fingerprint_samples(kept),
        block_subjects=[sorted({s.subject for s in block}) for block in blocks],
        block_losses=record.block_losses[:start_block] + run.block_losses,
        timings={
            "total_seconds": time.perf_counter() - started,
            "block_seconds": old_seconds + run.block_seconds,
            "resumed_from_block": start_block,
        },
    )
    new.save()
    return new
