"""Small pieces the unlearning methods share: loss levels, endless batch streams, optimizers, progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from workers.modeling.base import Batch, ModelAdapter, Sample

# Loss levels are measured on at most this many samples: enough for a stable mean, cheap on CPU.
LEVEL_SAMPLE_CAP = 512


def subsample(samples: Sequence[Sample], cap: int, seed: int) -> list[Sample]:
    """At most `cap` samples, a seeded random choice (order kept) when there are more."""
    if len(samples) <= cap:
        return list(samples)
    keep = np.sort(np.random.default_rng(seed).choice(len(samples), size=cap, replace=False))
    return [samples[i] for i in keep]


def mean_loss(adapter: ModelAdapter, samples: Sequence[Sample], batch_size: int = 64) -> float:
    """Mean per-sample loss in eval mode (mean token loss for language models)."""
    return float(adapter.per_sample_loss(samples, batch_size).mean()) if samples else float("nan")


def loss_level(adapter: ModelAdapter, samples: Sequence[Sample], seed: int, batch_size: int = 64) -> float:
    """Mean loss on a capped seeded subsample: the held-out level that forgetting aims for."""
    return mean_loss(adapter, subsample(samples, LEVEL_SAMPLE_CAP, seed), batch_size)


def endless_batches(
    adapter: ModelAdapter, samples: Sequence[Sample], batch_size: int, seed: int
) -> Iterator[Batch]:
    """Reshuffled epochs without end; epoch e uses seed + e so runs repeat exactly."""
    epoch = 0
    while True:
        yield from adapter.batches(samples, batch_size, shuffle=True, seed=seed + epoch)
        epoch += 1


def n_batches(n_samples: int, batch_size: int) -> int:
    return max(1, -(-n_samples // batch_size))


def linear_decay_optimizer(
    params: list[torch.nn.Parameter], lr: float, total_steps: int, end_factor: float, weight_decay: float
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a per-step linear learning-rate decay from lr to lr * end_factor."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0, end_factor=end_factor, total_iters=max(1, total_steps)
    )
    return optimizer, scheduler


def is_language_model(adapter: ModelAdapter) -> bool:
    return adapter.task == "causal-lm"


def is_text_model(adapter: ModelAdapter) -> bool:
    return adapter.task in ("causal-lm", "sequence-classification")


def changed_parameters(before: Mapping[str, torch.Tensor], adapter: ModelAdapter) -> list[str]:
    """Names of the parameters of `adapter` that differ from the state `before`."""
    return [
        name
        for name, p in adapter.model.named_parameters()
        if name in before and not torch.equal(before[name], p.detach())
    ]


def relearned_copy(
    adapter: ModelAdapter,
    retain: Sequence[Sample],
    parameters: Sequence[str],
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> ModelAdapter:
    """A copy of `adapter` after `steps` of AdamW on retain data alone over `parameters` (those the method
    changed, frozen or not): the relearning probe. Forgetting that this undoes was hidden, not removed."""
    probe = adapter.clone()
    wanted = set(parameters)
    params = [p for name, p in probe.model.named_parameters() if name in wanted]
    for p in params:
        p.requires_grad_(True)  # the copy is thrown away: unfreezing it leaves the result as it is
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    stream = endless_batches(probe, retain, batch_size, seed + 7919)  # another order than the method's
    probe.model.train()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        probe.loss(next(stream)).backward()
        optimizer.step()
    probe.model.eval()
    return probe


class RetainMonitor:
    """Watches utility on a fixed retain subset against the served model's loss there.

    Eval-mode losses on the same samples, so the comparison is free of dropout and batch noise. The
    tolerance is absolute in loss: 0.02 nats of mean token loss is a perplexity ratio of 1.02, inside the
    gate's 1.05.
    """

    def __init__(self, served: ModelAdapter, retain: Sequence[Sample], seed: int, size: int = 128) -> None:
        self.samples = subsample(retain, size, seed)
        self.served_loss = mean_loss(served, self.samples)

    def loss(self, adapter: ModelAdapter) -> float:
        return mean_loss(adapter, self.samples)

    def recovered(self, adapter: ModelAdapter, tolerance: float) -> bool:
        return self.loss(adapter) <= self.served_loss + tolerance


def smallest_scale_reaching(
    loss_at: Callable[[float], float], level: float, low: float, high: float, steps: int
) -> float:
    """Bisection for the smallest scale t in (low, high] with loss_at(t) >= level.

    Expects loss_at(low) < level <= loss_at(high). Used to land the forget loss on the held-out level
    along one line in weight space instead of overshooting it.
    """
    for _ in range(steps):
        middle = (low + high) / 2
        if loss_at(middle) >= level:
            high = middle
        else:
            low = middle
    return high
