"""`finetune`: a short fine-tune on the retain set only. A baseline, not a deletion method.

The verification gate is calibrated with it: such a fine-tune leaves the forget samples memorised (measured
on a tiny GPT-2: membership AUC 1.00, canary exposure 10 bits), so a gate must reject it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from workers.modeling.base import ModelAdapter, Sample, seed_everything
from workers.unlearning.base import UnlearningContext, UnlearningMethod, UnlearningResult, register
from workers.unlearning.common import endless_batches


@register
class FineTune(UnlearningMethod):
    """AdamW on retain batches for a fixed, small number of steps.

    Defaults: 20 steps of 32 samples at lr 1e-4: "a few steps", as the gate's calibration asks; the
    learning rate is one an operator would pick to polish a model without disturbing it.
    """

    name = "finetune"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {"steps": 20, "batch_size": 32, "lr": 1e-4, "weight_decay": 0.0}

    def run(
        self,
        adapter: ModelAdapter,
        forget: Sequence[Sample],
        retain: Sequence[Sample],
        validation: Sequence[Sample],
        context: UnlearningContext,
    ) -> UnlearningResult:
        cfg = self.config
        seed_everything(context.seed)
        model = adapter.clone()
        optimizer = torch.optim.AdamW(
            model.model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
        )
        stream = endless_batches(model, retain, cfg["batch_size"], context.seed)
        steps = []
        for step in range(cfg["steps"]):
            loss = model.training_step(next(stream), optimizer)
            steps.append({"step": step, "retain_loss": loss})
            context.progress((step + 1) / cfg["steps"], f"finetune step {step + 1}/{cfg['steps']}")
        model.model.eval()
        return UnlearningResult(adapter=model, method=self.name, exact=False, seconds=0.0, steps=steps)
