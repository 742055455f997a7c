"""`finetune`: a short fine-tune on the retain set only. A baseline, not a deletion method.

The verification gate is calibrated with it: such a fine-tune leaves the forget samples memorised (measured
on a tiny GPT-2: membership AUC 1.00, canary exposure 10 bits), so a gate must reject it.
"""

from __future__ import annotations

import torch

from app.registry.methods import FineTuneConfig, MethodName
from workers.modeling.base import ModelAdapter
from workers.unlearning.base import (
    DeletionSets,
    UnlearningContext,
    UnlearningMethod,
    UnlearningResult,
    register,
)
from workers.unlearning.common import endless_batches


@register
class FineTune(UnlearningMethod):
    """AdamW on retain batches for a fixed, small number of steps.

    Defaults (FineTuneConfig): 20 steps of 32 samples at lr 1e-4: "a few steps", as the gate's calibration
    asks; the learning rate is one an operator would pick to polish a model without disturbing it.
    """

    name = MethodName.FINETUNE
    config: FineTuneConfig

    def run(self, model: ModelAdapter, sets: DeletionSets, context: UnlearningContext) -> UnlearningResult:
        cfg = self.config
        optimizer = torch.optim.AdamW(model.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        stream = endless_batches(model, sets.retain, cfg.batch_size, context.seed)
        steps = []
        for step in range(cfg.steps):
            loss = model.training_step(next(stream), optimizer)
            steps.append({"step": step, "retain_loss": loss})
            context.progress((step + 1) / cfg.steps, f"finetune step {step + 1}/{cfg.steps}")
        return UnlearningResult(model, steps=steps)
