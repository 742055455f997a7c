"""`first_epoch_ascent`: gradient ascent along the forget samples' own first-epoch gradients.

Zagardo, "A More Practical Approach to Machine Unlearning" (arXiv 2406.09391).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from app.registry.methods import FirstEpochAscentConfig, MethodName
from workers.modeling.base import ModelAdapter, Sample, SampleGradient
from workers.unlearning.base import (
    DeletionSets,
    MethodUnavailable,
    Provenance,
    UnlearningContext,
    UnlearningMethod,
    UnlearningResult,
    has_first_epoch_gradients,
    register,
)
from workers.unlearning.common import (
    RetainMonitor,
    endless_batches,
    is_text_model,
    loss_level,
    mean_loss,
    smallest_scale_reaching,
)

Direction = dict[str, torch.Tensor]  # parameter name -> dense update direction


@register
class FirstEpochAscent(UnlearningMethod):
    """Ascend along the sum of the forget samples' first-epoch gradients (recorded during training;
    token-embedding rows only for text models), calibrated to the held-out loss level, then repair.

    1. Direction D = sum over forget samples of g_i / ||g_i||, g_i the sample's recorded first-epoch loss
       gradient. Each sample weighs the same, however well it is memorised now.
    2. Calibration: the stored gradients do not change between iterations, so iterated ascent moves the
       weights along one line, theta(t) = theta_0 + t * D / ||D||. A doubling search then a bisection find
       the smallest t where the forget samples' mean loss reaches the validation mean loss (the level a
       model never trained on them shows): past it the model is over-exposed, short of it it still knows
       them. Each probe is a forward pass over the forget set only.
    3. Repair: ascent on shared token rows costs everyone (measured: perplexity 11-46x without repair). Steps
       of AdamW on all parameters minimise mean retain loss + |level - mean forget loss|, so utility comes
       back while the forget loss is held at the level from both sides: with a one-sided hinge (squared or
       not) retain training moved it off (digits: relearned from 0.31 to 0.03; bios: drifted up from 3.54
       to 4.11, past retraining's 3.85). They stop once the loss on a fixed retain subset is within
       `retain_tolerance` nats of the served model's (checked every `check_every` steps), or after
       `repair_max_steps`.
    4. Iterate: when the repair has pulled the forget loss more than `level_tolerance` (10 %) below the
       level, ascend again from the repaired weights along the same direction and repair again, up to
       `rounds` (3) times. On a classifier's easy samples retain training relearns them at once (digits:
       one round ended at 0.06 against a level of 0.31).

    Choices where the paper is open: the calibration rule and search above; repair lr 1e-4 for text models
    and 1e-3 for others (an ordinary fine-tuning rate for each); no influence scoring or fuzzy matching of
    near-duplicates (the forget set is what provenance names). A model without recorded gradients (trained
    elsewhere, or without `record_first_epoch_grads`) uses each forget sample's gradient under the current
    model instead, on the same parameters; `allow_current_gradients=False` refuses that. A sample whose
    gradient was not recorded gets its current one.
    """

    name = MethodName.FIRST_EPOCH_ASCENT
    config: FirstEpochAscentConfig

    @property
    def required_provenance(self) -> frozenset[Provenance]:
        if self.config.allow_current_gradients:
            return self.needs
        return self.needs | {Provenance.FIRST_EPOCH_GRADIENTS}

    def run(self, model: ModelAdapter, sets: DeletionSets, context: UnlearningContext) -> UnlearningResult:
        forget, retain, validation = sets
        model.model.eval()
        level = loss_level(model, validation, context.seed)
        monitor = RetainMonitor(model, retain, context.seed)  # the served model's utility, before ascent
        direction, sources = self._direction(model, forget, context)
        rounds = self.config.rounds
        scales, probes, steps = [], [], []
        for round_ in range(rounds):
            context.progress(round_ / rounds, f"{self.name}: ascent, round {round_ + 1}")
            scale, round_probes = self._calibrate(model, direction, forget, level)
            scales.append(scale)
            probes += round_probes
            steps += self._repair(model, forget, retain, level, monitor, context, (round_, rounds))
            if mean_loss(model, forget) >= level * (1 - self.config.level_tolerance):
                break
        details = {
            "validation_level": level,
            "ascent_scales": scales,
            "rounds": len(scales),
            "probes": probes,
            "gradients": sources,
            "repair_steps": len(steps),
        }
        return UnlearningResult(model, steps=steps, details=details)

    # -- 1. direction ------------------------------------------------------------------------------
    def _direction(
        self, model: ModelAdapter, forget: Sequence[Sample], context: UnlearningContext
    ) -> tuple[Direction, dict[str, int]]:
        params = dict(model.model.named_parameters())
        direction: Direction = {}
        sources = {"first_epoch": 0, "current_model": 0}
        for sample in forget:
            grad = _recorded_gradient(context, sample.sample_id)
            if grad is None:
                if not self.config.allow_current_gradients:
                    raise MethodUnavailable(
                        f"{self.name}: no first-epoch gradient for sample {sample.sample_id}"
                    )
                grad = _current_gradient(model, sample)
                sources["current_model"] += 1
            else:
                sources["first_epoch"] += 1
            dense = {name: _dense(g, params[name]) for name, g in grad.items()}
            norm = torch.sqrt(sum((g.double() ** 2).sum() for g in dense.values()))
            if float(norm) == 0.0:
                continue
            for name, g in dense.items():
                direction[name] = direction.get(name, torch.zeros_like(g)) + g / norm.to(g.dtype)
        total = torch.sqrt(sum((d.double() ** 2).sum() for d in direction.values())) if direction else 0
        if not direction or float(total) == 0.0:
            raise ValueError(f"{self.name}: the forget samples have zero gradient; nothing to ascend")
        return {name: d / total.to(d.dtype) for name, d in direction.items()}, sources

    # -- 2. calibration ----------------------------------------------------------------------------
    @torch.no_grad()
    def _calibrate(
        self, model: ModelAdapter, direction: Direction, forget: Sequence[Sample], level: float
    ) -> tuple[float, list[dict[str, float]]]:
        cfg = self.config
        params = dict(model.model.named_parameters())
        origin = {name: params[name].detach().clone() for name in direction}

        def forget_loss_at(t: float) -> float:
            for name, d in direction.items():
                params[name].copy_(origin[name] + t * d)
            loss = mean_loss(model, forget)
            probes.append({"scale": t, "forget_loss": loss})
            return loss

        probes: list[dict[str, float]] = []
        if forget_loss_at(0.0) >= level:
            return 0.0, probes  # already at the held-out level: nothing to ascend
        size = float(torch.sqrt(sum((origin[n].double() ** 2).sum() for n in direction)))
        low, high = 0.0, cfg.initial_step * max(size, 1e-8)
        for _ in range(cfg.max_doublings):
            if forget_loss_at(high) >= level:
                break
            low, high = high, high * 2
        high = smallest_scale_reaching(forget_loss_at, level, low, high, cfg.bisection_steps)
        forget_loss_at(high)  # leave the weights at the smallest scale found that reaches the level
        return high, probes

    # -- 3. repair ---------------------------------------------------------------------------------
    def _repair(
        self,
        model: ModelAdapter,
        forget: Sequence[Sample],
        retain: Sequence[Sample],
        level: float,
        monitor: RetainMonitor,
        context: UnlearningContext,
        round_of: tuple[int, int],
    ) -> list[dict[str, float]]:
        cfg = self.config
        lr = cfg.repair_lr if cfg.repair_lr is not None else (1e-4 if is_text_model(model) else 1e-3)
        optimizer = torch.optim.AdamW(model.model.parameters(), lr=lr, weight_decay=0.0)
        retain_stream = endless_batches(model, retain, cfg.batch_size, context.seed)
        forget_stream = endless_batches(model, forget, cfg.batch_size, context.seed)
        steps: list[dict[str, float]] = []
        for step in range(cfg.repair_max_steps):
            if step % cfg.check_every == 0 and monitor.recovered(model, cfg.retain_tolerance):
                break
            model.model.train()
            optimizer.zero_grad(set_to_none=True)
            forget_loss = model.loss(next(forget_stream))
            retain_loss = model.loss(next(retain_stream))
            loss = retain_loss + (level - forget_loss).abs()
            loss.backward()
            optimizer.step()
            steps.append(
                {
                    "step": step,
                    "forget_loss": float(forget_loss.detach()),
                    "retain_loss": float(retain_loss.detach()),
                }
            )
            done = (round_of[0] + (step + 1) / cfg.repair_max_steps) / round_of[1]
            context.progress(done, f"{self.name}: repair, round {round_of[0] + 1}")
        return steps


def _recorded_gradient(context: UnlearningContext, sample_id: str) -> SampleGradient | None:
    if not has_first_epoch_gradients(context.training):
        return None
    try:
        return context.training.first_epoch_gradient(sample_id)
    except KeyError:
        return None


def _dense(gradient: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    gradient = gradient.to_dense() if gradient.is_sparse else gradient
    return gradient.to(param.device, param.dtype)


def _current_gradient(model: ModelAdapter, sample: Sample) -> SampleGradient:
    """The sample's loss gradient under the current weights, on the parameters the recorder keeps: the
    token-embedding rows of the sample's tokens for text models (with tied input/output embeddings this
    includes the output layer's share, which the recorder leaves out), every trainable parameter otherwise.
    """
    batch = model.collate([sample])
    embedding_name = model.token_embedding_name() if hasattr(model, "token_embedding_name") else None
    all_params = dict(model.model.named_parameters())
    params = {embedding_name: all_params[embedding_name]} if embedding_name else model.trainable_parameters()
    frozen = [p for p in params.values() if not p.requires_grad]
    for p in frozen:  # a frozen embedding still has a gradient worth ascending
        p.requires_grad_(True)
    try:
        loss = model.sample_losses(batch).sum()
        grads = torch.autograd.grad(loss, list(params.values()))
    finally:
        for p in frozen:
            p.requires_grad_(False)
    out = {name: g.detach() for name, g in zip(params, grads, strict=True)}
    if embedding_name:
        rows = batch.inputs["input_ids"][batch.inputs["attention_mask"].bool()].unique()
        mask = torch.zeros(
            out[embedding_name].shape[0], 1, device=rows.device, dtype=out[embedding_name].dtype
        )
        mask[rows] = 1
        out[embedding_name] = out[embedding_name] * mask
    return out
