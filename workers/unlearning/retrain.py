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
  (config `recipe`, TrainingRecipe fields); the layout is then the subject-aligned one of the retain set.
- With `context.workdir` set, the retrain records its own provenance there (checkpoints, first-epoch
  gradients per its recipe) so that the new version can itself be unlearned by the methods that need them;
  the TrainingRecord is returned in `details["training_record"]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.registry.methods import MethodName, RetrainConfig
from workers.modeling.base import ModelAdapter
from workers.modeling.training import (
    BlockRun,
    TrainingRecipe,
    retrain_without,
    subject_aligned_blocks,
    train_blocks,
    train_with_provenance,
)
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
class Retrain(UnlearningMethod):
    name = MethodName.RETRAIN
    config: RetrainConfig
    exact = True
    needs = frozenset({Provenance.RECIPE})
    records_provenance = True
    works_on_copy = False  # a fresh model from the recorded initialisation, not the served weights

    @property
    def required_provenance(self) -> frozenset[Provenance]:
        return frozenset() if self.config.recipe is not None else self.needs

    def run(self, model: ModelAdapter, sets: DeletionSets, context: UnlearningContext) -> UnlearningResult:
        forget, retain, _ = sets
        record = context.training
        forget_ids = [s.sample_id for s in forget]
        details: dict[str, Any] = {}
        workdir = context.workdir
        recipe_fields = self.config.recipe
        overrides = recipe_fields.model_dump(exclude_unset=True) if recipe_fields is not None else {}

        def progress(fraction: float, message: str) -> None:
            context.progress(0.99 * fraction, f"retrain: {message}")

        if record is not None:
            recipe = record.recipe.replace(**overrides)
            try:
                retrained, outcome = retrain_without(
                    record,
                    [*retain, *forget],
                    forget_ids,
                    recipe=recipe,
                    workdir=workdir,
                    device=model.device,
                    progress=progress,
                )
            except KeyError as exc:
                raise MethodUnavailable(
                    f"retrain is exact only on the full retain set: {exc.args[0]}"
                ) from None
            details["first_affected_block"] = _first_affected(record, forget_ids)
        else:
            recipe = TrainingRecipe(**overrides)
            blocks = subject_aligned_blocks(retain, recipe.num_blocks, recipe.seed)
            retrained = type(model).from_config(model.config(), device=model.device)
            if workdir is not None:
                outcome = train_with_provenance(retrained, list(retain), recipe, workdir, progress, blocks)
            else:
                outcome = train_blocks(retrained, blocks, recipe, progress=progress)
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
        return UnlearningResult(retrained, steps=steps, details=details)


def _first_affected(record: Any, forget_ids: Sequence[str]) -> int | None:
    try:
        return record.first_affected_block(forget_ids)
    except KeyError:
        return None  # none of the forget samples trained this version: retraining changes nothing
