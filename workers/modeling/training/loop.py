"""The block loop every training run goes through: blocks in sequence, each reseeded, optionally recorded."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from app.registry.recipe import TrainingRecipe
from workers.modeling.adapters.sharded import ShardedAdapter
from workers.modeling.base import ModelAdapter, Sample, SampleGradient
from workers.modeling.training.determinism import derive_seed, deterministic
from workers.modeling.training.layout import epoch_order
from workers.modeling.training.optimizer import block_lr, make_optimizer

# progress(fraction 0..1, message); same shape as workers.unlearning.base.ProgressCallback.
Progress = Callable[[float, str], None]
# on_block_end(block_index, adapter, optimizer) -> True to stop after this block.
BlockHook = Callable[[int, ModelAdapter, torch.optim.Optimizer], bool | None]
GradientSink = Callable[[Sample, SampleGradient], None]


@dataclass
class BlockRun:
    """What `train_blocks` did: the optimizer it left, the blocks it trained, their timings and losses."""

    optimizer: torch.optim.Optimizer
    trained_blocks: list[int] = field(default_factory=list)
    block_seconds: list[float] = field(default_factory=list)
    block_losses: list[float] = field(default_factory=list)  # mean training loss of each block's last epoch
    order: list[dict[str, Any]] = field(default_factory=list)  # {"block", "epoch", "sample_ids"}
    stopped_early: bool = False


def train_blocks(
    adapter: ModelAdapter,
    blocks: Sequence[Sequence[Sample]],
    recipe: TrainingRecipe,
    start_block: int = 0,
    optimizer_state: Mapping[str, Any] | None = None,
    *,
    on_block_end: BlockHook | None = None,
    record_gradient: GradientSink | None = None,
    progress: Progress | None = None,
) -> BlockRun:
    """Train `blocks[start_block:]` in sequence on `adapter` (in place), continuing `optimizer_state`.

    `blocks` is the whole layout (global block indices seed the data order). To resume, load the model
    state of checkpoint `start_block` into the adapter and pass that checkpoint's optimizer state.
    `on_block_end` may stop the run by returning True; `record_gradient` receives each sample's own loss
    gradient in the first epoch of its block.
    """
    if isinstance(adapter, ShardedAdapter):  # its members each train on their own shard
        raise TypeError("a sharded model trains member by member (workers/modeling/training/shards.py)")
    optimizer = make_optimizer(adapter, recipe)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    run = BlockRun(optimizer=optimizer)
    total = max(1, len(blocks) - start_block)
    # every block reseeds torch; forking leaves the caller's random state as it was
    with deterministic(), torch.random.fork_rng():
        for k in range(start_block, len(blocks)):
            started = time.perf_counter()
            loss = _train_one_block(
                adapter, blocks[k], k, len(blocks), recipe, optimizer, run, record_gradient
            )
            run.block_losses.append(loss)
            run.block_seconds.append(time.perf_counter() - started)
            run.trained_blocks.append(k)
            if progress is not None:
                progress((k - start_block + 1) / total, f"block {k + 1}/{len(blocks)}")
            if on_block_end is not None and on_block_end(k, adapter, optimizer):
                run.stopped_early = k < len(blocks) - 1
                break
    return run


def _train_one_block(
    adapter: ModelAdapter,
    block: Sequence[Sample],
    k: int,
    num_blocks: int,
    recipe: TrainingRecipe,
    optimizer: torch.optim.Optimizer,
    run: BlockRun,
    record_gradient: GradientSink | None,
) -> float:
    torch.manual_seed(derive_seed(recipe.seed, "torch", k))  # dropout etc. depend on the block only
    for group in optimizer.param_groups:
        group["lr"] = block_lr(recipe, k, num_blocks)
    last_epoch_losses: list[float] = []
    for epoch in range(recipe.epochs):
        ordered = epoch_order(block, recipe.seed, k, epoch)
        run.order.append({"block": k, "epoch": epoch, "sample_ids": [s.sample_id for s in ordered]})
        losses = []
        for start in range(0, len(ordered), recipe.batch_size):
            batch = adapter.collate(ordered[start : start + recipe.batch_size])
            if epoch == 0 and record_gradient is not None:
                loss, grads = adapter.training_step_recording(batch, optimizer)
                for sample, grad in zip(batch.samples, grads, strict=True):
                    record_gradient(sample, grad)
            else:
                loss = adapter.training_step(batch, optimizer)
            losses.append(loss)
        last_epoch_losses = losses
    return float(np.mean(last_epoch_losses)) if last_epoch_losses else float("nan")
