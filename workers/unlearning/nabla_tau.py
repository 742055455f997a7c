"""`nabla_tau`: gradient ascent on the forget set that stops itself at the validation loss level.

Trippa, Campagnano, Bucarelli, Tolomei, Silvestri, "∇τ: Gradient-based and Task-Agnostic machine
Unlearning" (arXiv 2403.14339).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from app.registry.methods import MethodName, NablaTauConfig
from workers.modeling.base import ModelAdapter, Sample
from workers.unlearning.base import (
    DeletionSets,
    UnlearningContext,
    UnlearningMethod,
    UnlearningResult,
    register,
)
from workers.unlearning.common import (
    RetainMonitor,
    endless_batches,
    is_text_model,
    linear_decay_optimizer,
    loss_level,
    mean_loss,
    n_batches,
)


@register
class NablaTau(UnlearningMethod):
    """Each step pairs one forget batch with one retain batch and minimises

        L = alpha * ReLU(mu_val - mean forget loss)^2 + (1 - alpha) * mean retain loss,

    mu_val being the mean validation loss, so ascent on the forget set ends by itself at the held-out
    level. All parameters train with AdamW and a per-step LinearLR 1.0 -> 0.1; alpha decays linearly from
    alpha0 to 0 over the forget epochs; forget epochs = floor(|retain batches| / (2 |forget batches|) * 6),
    capped at 80 (the paper's schedule).

    Choices where the paper is open or does not fit:
    - lr 3e-4 for text models (the paper's NLP variant), 1e-3 for others.
    - alpha0 = max(forget fraction * 5/3, `alpha_floor` = 0.5): 0.5 is the NLP variant's value and the
      classifier formula's at 30 %. By the letter one subject in a thousand gives alpha0 0.002, a plain
      fine-tune (measured on digits with the floor at 0.05: forget loss 0.002 -> 0.009 against a held-out
      level of 0.31 after the whole schedule).
    - At least `min_forget_epochs` (60) forget epochs: on small retain sets the paper's count is a handful
      of steps, too few to ascend from a memorised sample's loss to the held-out level (bios small: 12
      steps took the loss from 0.15 to 0.62 against 4.98, 30 steps to 4.1); the early stop below ends
      runs that need less.
    - Known limit: on a classifier's confidently fit samples the forget term's gradient vanishes with the
      softmax, and the ascent barely starts within the schedule (digits: forget loss 0.002 -> 0.013
      against a held-out level of 0.31; minilm, a rare-phrase subject: 0.003 -> 0.002 where retraining
      gives 0.55), so the run is then a fine-tune on retain data that the gate should reject.
    - Batches of 64 rather than 256: the retain batch only keeps utility, and on a CPU its size sets the
      cost of every step; forget batches hold min(64, |forget|) samples.
    - mu_val is measured on at most 512 validation samples and refreshed every 10 forget epochs.
    - Early stop (`early_stop`, on by default): after each forget epoch the forget set's eval-mode loss is
      measured (a forward pass over a few samples); once it has reached mu_val and the loss on a fixed
      retain subset is back within `retain_tolerance` (nats) of the served model's, the rest of the
      schedule is only fine-tuning on retain data and is skipped. Stopping at the first such epoch also
      stops Adam's momentum from carrying the ascent past the level (measured on bios: perplexity 1.8x the
      level when the run continued five more steps).
    """

    name = MethodName.NABLA_TAU
    config: NablaTauConfig

    def _schedule(self, adapter: ModelAdapter, n_forget: int, n_retain: int) -> tuple[float, float, int]:
        cfg = self.config
        text = is_text_model(adapter)
        lr = cfg.lr if cfg.lr is not None else (3e-4 if text else 1e-3)
        fraction = n_forget / max(1, n_forget + n_retain)
        alpha0 = cfg.alpha0 if cfg.alpha0 is not None else max(cfg.alpha_floor, fraction * 5 / 3)
        forget_batches = n_batches(n_forget, cfg.batch_size)
        retain_batches = n_batches(n_retain, cfg.batch_size)
        paper_epochs = int(retain_batches / (2 * forget_batches) * 6)
        epochs = min(cfg.max_forget_epochs, max(cfg.min_forget_epochs, paper_epochs))
        return lr, alpha0, epochs

    def run(self, model: ModelAdapter, sets: DeletionSets, context: UnlearningContext) -> UnlearningResult:
        forget, retain, validation = sets
        cfg = self.config
        lr, alpha0, epochs = self._schedule(model, len(forget), len(retain))
        forget_per_epoch = n_batches(len(forget), cfg.batch_size)
        total_steps = epochs * forget_per_epoch
        optimizer, scheduler = linear_decay_optimizer(
            list(model.model.parameters()), lr, total_steps, cfg.lr_end_factor, cfg.weight_decay
        )
        retain_stream = endless_batches(model, retain, cfg.batch_size, context.seed)
        monitor = RetainMonitor(model, retain, context.seed)
        mu_val = loss_level(model, validation, context.seed)
        steps: list[dict[str, float]] = []
        stopped_early = False
        for epoch in range(epochs):
            if epoch and epoch % cfg.val_refresh_epochs == 0:
                mu_val = loss_level(model, validation, context.seed)
            alpha = alpha0 * (1 - epoch / epochs)
            forget_batches = model.batches(forget, cfg.batch_size, shuffle=True, seed=context.seed + epoch)
            for forget_batch in forget_batches:
                model.model.train()
                optimizer.zero_grad(set_to_none=True)
                forget_loss = model.loss(forget_batch)
                retain_loss = model.loss(next(retain_stream))
                gap = torch.relu(mu_val - forget_loss)
                loss = alpha * gap**2 + (1 - alpha) * retain_loss
                loss.backward()
                optimizer.step()
                scheduler.step()
                steps.append(
                    {
                        "step": len(steps),
                        "forget_loss": float(forget_loss.detach()),
                        "retain_loss": float(retain_loss.detach()),
                        "mu_val": mu_val,
                        "alpha": alpha,
                        "lr": scheduler.get_last_lr()[0],
                    }
                )
            context.progress((epoch + 1) / epochs, f"nabla_tau epoch {epoch + 1}/{epochs}")
            if cfg.early_stop and self._recovered(model, forget, mu_val, monitor):
                stopped_early = True
                break
        details = {
            "lr": lr,
            "alpha0": alpha0,
            "forget_epochs_planned": epochs,
            "forget_epochs_run": epoch + 1,
            "stopped_early": stopped_early,
            "mu_val": mu_val,
        }
        return UnlearningResult(model, steps=steps, details=details)

    def _recovered(
        self, model: ModelAdapter, forget: Sequence[Sample], mu_val: float, monitor: RetainMonitor
    ) -> bool:
        """Forget loss at the validation level and retain utility back (the retain check only then)."""
        if mean_loss(model, forget) < mu_val:
            return False
        return monitor.recovered(model, self.config.retain_tolerance)
