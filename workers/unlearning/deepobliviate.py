"""`deepobliviate`: restart from the block checkpoint before the first affected block.

He, Meng, Chen, He, Hu, "DeepObliviate: A Powerful Charm for Erasing Data Residual Memory in Deep Neural
Networks" (arXiv 2105.06209).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from app.registry.methods import DeepObliviateConfig, MethodName
from workers.modeling.base import ModelAdapter, Sample
from workers.unlearning.base import (
    DeletionSets,
    MethodUnavailable,
    Provenance,
    UnlearningContext,
    UnlearningMethod,
    UnlearningResult,
    register,
)


@register
class DeepObliviate(UnlearningMethod):
    """Reload the model and optimizer state saved before block d, the first block holding a forget sample,
    and retrain blocks d, d+1, ... without the forget samples, with the recorded recipe and data order.

    Residual memory of block k: delta_k = ||(M_k - M_{k-1}) - (M'_k - M'_{k-1})||_1, M the original
    trajectory (block checkpoints), M' the retrained one. With `early_stop`, delta(k) = a * k^(-h) + b is
    fitted over the retrained blocks (k = 1 at block d) and retraining stops after the block where the
    fitted slope |a * h * k^(-h-1)| falls below `eps`; the original updates of the blocks not retrained are
    then stitched on: M_final = M'_{d+t} + (M_B - M_{d+t}).

    The residual memory is measured (and reported per block) only with `early_stop`: it reads two block
    checkpoints per block, which on a text model costs more than the block's training.

    With `early_stop=False`, or when the criterion never fires, every block from d on is retrained: the
    result is bit-identical to retraining without the forget samples (the training loop makes a block's
    data order and randomness a function of its content) and is marked exact.

    Choices where the paper is open:
    - delta_k is divided by the L1 norm of the original block update ||M_k - M_{k-1}||_1, so `eps` is free
      of the model's size and scale; eps = 0.01 per block, at least `min_blocks` = 4 points before a fit,
      a, h, b >= 0 (a decaying, non-negative curve).
    - A flat curve is not enough: the fitted residual itself must be below `max_residual` (5 % of the
      original block update), else a residual that stopped decaying at a high level would end the run.
    - Early stop is off by default. Measured on digits, the residual memory does not decay under a constant
      learning rate (Adam), and stitching cost 1.5-2 accuracy points, more than the gate's 1 % utility
      tolerance; exact restarts are what the gate can promote where membership signals have no power.
    """

    name = MethodName.DEEPOBLIVIATE
    config: DeepObliviateConfig
    exact = True
    needs = frozenset({Provenance.BLOCK_CHECKPOINTS})

    @property
    def is_exact(self) -> bool:
        return not self.config.early_stop  # a stop stitches the original updates on: approximate

    def check_available(self, adapter: ModelAdapter, context: UnlearningContext) -> None:
        record = context.training
        if record.adapter_kind != adapter.kind:
            raise MethodUnavailable(
                f"{self.name}: the training record is for a {record.adapter_kind!r} model, "
                f"not this {adapter.kind!r}"
            )

    def run(self, model: ModelAdapter, sets: DeletionSets, context: UnlearningContext) -> UnlearningResult:
        from workers.modeling.training import train_blocks

        forget, retain, _ = sets
        record = context.training
        forget_ids = [s.sample_id for s in forget]
        try:
            first = record.first_affected_block(forget_ids)
        except KeyError:
            raise ValueError("none of the forget samples trained this version: nothing to unlearn") from None
        blocks = self._blocks(record, forget, retain, first)
        optimizer_state = record.restore(model, first)
        # measuring the residual memory reads two checkpoints per block: only worth it to decide a stop
        residual = _ResidualMemory(record, model, first, self.config) if self.config.early_stop else None
        context.progress(0.0, f"{self.name}: retraining blocks {first + 1}..{record.num_blocks}")
        run = train_blocks(
            model,
            blocks,
            record.recipe,
            start_block=first,
            optimizer_state=optimizer_state,
            on_block_end=residual.after_block if residual is not None else None,
            progress=lambda fraction, message: context.progress(fraction * 0.99, message),
        )
        last = run.trained_blocks[-1]
        stitched = last < record.num_blocks - 1
        if stitched:
            _stitch(model, record, last)
        steps = [
            {
                "block": k,
                "seconds": s,
                "train_loss": loss,
                **(residual.by_block.get(k, {}) if residual else {}),
            }
            for k, s, loss in zip(run.trained_blocks, run.block_seconds, run.block_losses, strict=True)
        ]
        details = {
            "first_block": first,
            "num_blocks": record.num_blocks,
            "blocks_retrained": len(run.trained_blocks),
            "stitched": stitched,
            "fit": residual.fit if residual is not None else None,
        }
        return UnlearningResult(model, exact=not stitched, steps=steps, details=details)

    @staticmethod
    def _blocks(
        record: Any, forget: Sequence[Sample], retain: Sequence[Sample], first: int
    ) -> list[list[Sample]]:
        """The recorded layout without the forget samples; blocks from `first` on must be complete."""
        forget_ids = {s.sample_id for s in forget}
        blocks = record.blocks_as_samples([*retain, *forget], exclude=list(forget_ids), strict=False)
        for k in range(first, record.num_blocks):
            expected = sum(1 for sid in record.blocks[k] if sid not in forget_ids)
            if len(blocks[k]) != expected:
                raise MethodUnavailable(
                    f"deepobliviate: block {k} trained on {expected} retained samples but only "
                    f"{len(blocks[k])} were provided; an exact restart needs the full retain set of blocks "
                    f"{first}..{record.num_blocks - 1}"
                )
        return blocks


class _ResidualMemory:
    """Measures delta_k after every retrained block and decides the early stop."""

    def __init__(self, record: Any, model: ModelAdapter, first: int, config: DeepObliviateConfig) -> None:
        self.record = record
        self.first = first
        self.config = config
        self.previous = _float_state(model)
        self.original_previous = _float_state_of(record, first)
        self.by_block: dict[int, dict[str, float]] = {}
        self.relative: list[float] = []
        self.fit: dict[str, float] | None = None

    def after_block(self, k: int, model: ModelAdapter, optimizer: torch.optim.Optimizer) -> bool:
        current = _float_state(model)
        original = _float_state_of(self.record, k + 1)
        delta = 0.0
        original_step = 0.0
        for name, now in current.items():  # keys of the deduplicated model tensors
            original_update = original[name] - self.original_previous[name]
            delta += float((original_update - (now - self.previous[name])).abs().sum())
            original_step += float(original_update.abs().sum())
        self.previous, self.original_previous = current, original
        relative = delta / max(original_step, 1e-12)
        self.relative.append(relative)
        self.by_block[k] = {"residual_memory": delta, "residual_memory_relative": relative}
        return self._converged()

    def _converged(self) -> bool:
        if len(self.relative) < self.config.min_blocks:
            return False
        a, h, b = fit_power_law(np.array(self.relative))
        k = len(self.relative)
        slope = abs(a * h * k ** (-h - 1))
        level = a * k ** (-h) + b
        self.fit = {"a": a, "h": h, "b": b, "slope": slope, "level": level, "k": k}
        return slope < self.config.eps and level < self.config.max_residual


def fit_power_law(values: np.ndarray) -> tuple[float, float, float]:
    """Least-squares fit of values[k-1] = a * k^(-h) + b for k = 1..n."""
    from scipy.optimize import curve_fit

    ks = np.arange(1, len(values) + 1, dtype=float)
    guess = (max(float(values[0] - values[-1]), 1e-6), 1.0, max(float(values[-1]), 0.0))
    try:
        (a, h, b), _ = curve_fit(
            lambda k, a, h, b: a * k ** (-h) + b, ks, values, p0=guess, bounds=([0, 0, 0], np.inf)
        )
    except RuntimeError:  # the fit did not converge: report an infinite slope, i.e. not decaying
        return float("inf"), 1.0, float(values[-1])
    return float(a), float(h), float(b)


def _float_tensors(model: ModelAdapter) -> dict[str, torch.Tensor]:
    """Float parameters and buffers, each storage once (tied embeddings would count twice)."""
    named = [*model.model.named_parameters(), *model.model.named_buffers()]
    return {name: t for name, t in named if t.is_floating_point()}


def _float_state(model: ModelAdapter) -> dict[str, torch.Tensor]:
    """What training can change, in float64 on the CPU (frozen weights add nothing to the residual)."""
    trainable = model.trainable_parameters()
    return {
        name: t.detach().to("cpu", torch.float64).clone()
        for name, t in _float_tensors(model).items()
        if name in trainable or not isinstance(t, torch.nn.Parameter)
    }


def _float_state_of(record: Any, k: int) -> dict[str, torch.Tensor]:
    state, _ = record.checkpoint(k)
    return {name: t.to(torch.float64) for name, t in state.items() if t.is_floating_point()}


def _stitch(model: ModelAdapter, record: Any, last: int) -> None:
    """M_final = M'_{d+t} + (M_B - M_{d+t}): add the original updates of the blocks not retrained."""
    final, _ = record.checkpoint(record.num_blocks)
    at_stop, _ = record.checkpoint(last + 1)
    with torch.no_grad():
        for name, tensor in _float_tensors(model).items():
            tensor.add_((final[name] - at_stop[name]).to(tensor.device, tensor.dtype))
