"""`retrain`: exact unlearning, the reference every other method is measured against.

The served version's own recipe is replayed from the same initialisation (same init seed) on the retain
set only, with the served version's block layout minus the forget samples: every block that held no forget
sample is visited exactly as before, so the result equals DeepObliviate's restart from the first affected
block (without early stop) bit for bit, and its time is the denominator of every reported speedup.

Choices:
- The layout is inherited rather than recomputed on the retain set: a fresh subject-aligned layout of the
  retain set would move other subjects between blocks and make "retrain" a different training run than the
  one the served version came from.
- Retrain needs every retained training sample: a subsample of the retain set would not be exact, so it is
  refused (MethodUnavailable), never silently accepted.
- A model trained elsewhere (no TrainingRecord) can be retrained only when the caller supplies the recipe
  (`config["recipe"]`, a TrainingRecipe dict); the layout is then the subject-aligned one of the retain set.
- With `config["workdir"]` set, the retrain records its own provenance there (checkpoints, first-epoch
  gradients per its recipe) so that the new version can itself be unlearned by the methods that need them;
  the TrainingRecord is returned in `details["training_record"]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workers.modeling.base import ModelAdapter, Sample
from workers.modeling.training import (
    BlockRun,
    TrainingRecipe,
    retrain_without,
    subject_aligned_blocks,
    train_blocks,
    train_with_provenance,
)
from workers.unlearning.base import (
    MethodUnavailable,
    UnlearningContext,
    UnlearningMethod,
    UnlearningResult,
    register,
)


@register
class Retrain(UnlearningMethod):
    name = "retrain"
    exact = True

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {"recipe": None, "workdir": None}

    def check_available(self, adapter: ModelAdapter, context: UnlearningContext) -> None:
        if context.training is None and self.config["recipe"] is None:
            raise MethodUnavailable(
                "retrain needs the served version's training recipe: this model has no training record "
                "(trained elsewhere); pass config recipe={...} (a TrainingRecipe) to retrain it from scratch"
            )

    def run(
        self,
        adapter: ModelAdapter,
        forget: Sequence[Sample],
        retain: Sequence[Sample],
        validation: Sequence[Sample],
        context: UnlearningContext,
    ) -> UnlearningResult:
        record = context.training
        forget_ids = [s.sample_id for s in forget]
        details: dict[str, Any] = {}
        workdir = self.config["workdir"]

        def progress(fraction: float, message: str) -> None:
            context.progress(0.99 * fraction, f"retrain: {message}")

        if record is not None:
            recipe = TrainingRecipe.from_dict({**record.recipe.to_dict(), **(self.config["recipe"] or {})})
            try:
                model, outcome = retrain_without(
                    record,
                    [*retain, *forget],
                    forget_ids,
                    recipe=recipe,
                    workdir=workdir,
                    device=adapter.device,
                    progress=progress,
                )
            except KeyError as exc:
                raise MethodUnavailable(
                    f"retrain is exact only on the full retain set: {exc.args[0]}"
                ) from None
            details["first_affected_block"] = _first_affected(record, forget_ids)
        else:
            recipe = TrainingRecipe.from_dict(self.config["recipe"])
            blocks = subject_aligned_blocks(retain, recipe.num_blocks, recipe.seed)
            model = type(adapter).from_config(adapter.config(), device=adapter.device)
            if workdir is not None:
                outcome = train_with_provenance(model, list(retain), recipe, workdir, progress, blocks)
            else:
                outcome = train_blocks(model, blocks, recipe, progress=progress)
        if isinstance(outcome, BlockRun):
            block_seconds, block_losses = outcome.block_seconds, outcome.block_losses
            sizes = [len(v["sample_ids"]) for v in outcome.order if v["epoch"] == 0]
        else:
            details["training_record"] = outcome
            block_seconds, block_losses = outcome.timings["block_seconds"], outcome.block_losses
            sizes = [len(b) for b in outcome.blocks]
        steps = [
            {"block": float(k), "samples": float(n), "loss": loss, "seconds": seconds}
            for k, (n, loss, seconds) in enumerate(zip(sizes, block_losses, block_seconds, strict=True))
        ]
        details.update(
            {"blocks": len(steps), "trained_samples": sum(sizes), "forgotten_samples": len(forget_ids)}
        )
        return UnlearningResult(model, self.name, exact=True, seconds=0.0, steps=steps, details=details)


def _first_affected(record: Any, forget_ids: Sequence[str]) -> int | None:
    try:
        return record.first_affected_block(forget_ids)
    except KeyError:
        return None  # none of the forget samples trained this version: retraining changes nothing
