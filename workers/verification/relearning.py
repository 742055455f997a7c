"""Relearning probe: fine-tune the candidate briefly on retain data only; the forgotten must stay forgotten.

If a short fine-tune on data that does not contain the forget set brings its memorization back, the data was
hidden, not removed (measured on a tiny GPT-2: after embedding-only ascent one retain epoch restored the
canaries to 5.6-10 bits). The fine-tune is the `finetune` baseline method with the policy's steps and
learning rate, on EVERY parameter in which the candidate differs from the served version, frozen ones
included: an edit to weights the served version's training never updates (minilm's frozen token
embeddings) could otherwise never be undone by the probe, a blind spot. The relearned model is scored by the
same checks as the candidate (role "relearned") against the same exact-retrain nulls.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

from workers.modeling.base import ModelAdapter, Sample
from workers.unlearning.base import UnlearningContext, get_method
from workers.verification.checks import CheckResult
from workers.verification.gate import Policy


def relearn(
    candidate: ModelAdapter,
    forget: Sequence[Sample],
    retain: Sequence[Sample],
    heldout: Sequence[Sample],
    policy: Policy,
    trainable: Collection[str] | None = None,
) -> tuple[ModelAdapter, CheckResult]:
    """The candidate after `policy.relearn_steps` retain-only steps, and the probe's record.

    `trainable`: names of the parameters the probe fine-tunes (`differing_parameter_names`); None: those the
    candidate has trainable.
    """
    started = time.perf_counter()
    candidate = trainable_like(candidate, trainable)
    method = get_method(
        "finetune", steps=policy.relearn_steps, lr=policy.relearn_lr, batch_size=policy.relearn_batch_size
    )
    relearned = method.unlearn(
        candidate, forget, retain, heldout, UnlearningContext(seed=policy.seed)
    ).adapter
    result = CheckResult("relearning")
    result.values.update(
        {
            "relearning.steps": policy.relearn_steps,
            "relearning.lr": policy.relearn_lr,
            "relearning.batch_size": policy.relearn_batch_size,
            "relearning.parameters": sorted(trainable) if trainable is not None else "trainable",
        }
    )
    result.seconds = time.perf_counter() - started
    return relearned, result


def trainable_parameter_names(adapter: ModelAdapter) -> set[str]:
    return {name for name, p in adapter.model.named_parameters() if p.requires_grad}


def differing_parameter_names(candidate: ModelAdapter, served: ModelAdapter) -> set[str]:
    """Parameters whose values in the candidate are not the served version's (or that it lacks): what an
    unlearning method changed, trainable or not."""
    import torch

    theirs = dict(served.model.named_parameters())
    return {
        name
        for name, p in candidate.model.named_parameters()
        if name not in theirs
        or p.shape != theirs[name].shape
        or not torch.equal(p.detach(), theirs[name].detach())
    }


def trainable_like(model: ModelAdapter, trainable: Collection[str] | None) -> ModelAdapter:
    """`model`, or a clone of it whose trainable parameters are exactly `trainable`."""
    if trainable is None or trainable_parameter_names(model) == set(trainable):
        return model
    twin = model.clone()
    for name, parameter in twin.model.named_parameters():
        parameter.requires_grad_(name in trainable)
    return twin
