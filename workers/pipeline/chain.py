"""Which methods a job tries, in order: the escalation chain.

A request names a method or `auto`; `auto` defers to the model's policy (`method`), and a policy `auto`
picks by what the served version supports: SISA where the lineage was trained in shards, DeepObliviate
where it kept block checkpoints, LoRA residual alignment for pre-trained encoders, ∇τ otherwise. When the
gate fails a candidate (or cannot tell), the next method runs; the chain ends with an exact method (SISA,
DeepObliviate without early stop, or retraining) whenever the lineage offers what it needs, since an exact
candidate is promoted on its utility.

Model policy keys read here (app/registry/policy.py): method, chain (an explicit list), method_config.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.registry.methods import AUTO, MethodName
from app.registry.policy import ModelPolicy

ENCODER_TASKS = frozenset({"sequence-classification"})
# The exact methods a chain ends with, cheapest first; each joins when the lineage offers what it needs.
EXACT_TAIL = (MethodName.SISA, MethodName.DEEPOBLIVIATE, MethodName.RETRAIN)


@dataclass(frozen=True)
class Capabilities:
    """What the lineage of the served version offers the methods."""

    task: str
    has_checkpoints: bool  # a training record with block checkpoints covers the served version
    has_recipe: bool  # a training record (or the policy) says how the lineage was trained
    sharded: bool = False  # the served version was trained in shards (SISA), each member checkpointed

    def offers(self) -> frozenset[str]:
        from workers.unlearning.base import Provenance

        offered = {Provenance.BLOCK_CHECKPOINTS} if self.has_checkpoints else set()
        if self.sharded:
            offered.add(Provenance.SHARDS)
        if self.has_recipe:
            offered.add(Provenance.RECIPE)
        return frozenset(offered)


def is_exact(method: str, policy: ModelPolicy) -> bool:
    """Whether `method`, with the settings the policy gives it, is exact by construction."""
    from workers.unlearning.base import get_method

    return get_method(method, **policy.config_of(method)).is_exact


def first_choice(capabilities: Capabilities) -> str:
    if capabilities.sharded:
        return MethodName.SISA
    if capabilities.has_checkpoints:
        return MethodName.DEEPOBLIVIATE
    if capabilities.task in ENCODER_TASKS:
        return MethodName.LORA_RESIDUAL_ALIGNMENT
    return MethodName.NABLA_TAU


def exact_tail(capabilities: Capabilities) -> list[str]:
    """The exact methods the lineage can run, cheapest first. Retraining also follows DeepObliviate: a
    restart refused at run time (e.g. samples missing) can still retrain."""
    from workers.unlearning.base import method_class

    offered = capabilities.offers()
    return [str(name) for name in EXACT_TAIL if method_class(name).needs <= offered]


def choose_chain(requested: str, policy: ModelPolicy, capabilities: Capabilities) -> list[str]:
    """The methods to try in order, without repeats."""
    if policy.chain and requested == AUTO:
        chain = [str(name) for name in policy.chain]
    else:
        name = requested if requested != AUTO else str(policy.method)
        chain = [str(first_choice(capabilities)) if name == AUTO else name]
        tail = exact_tail(capabilities)
        if is_exact(chain[0], policy):  # then followed only by the exact methods after it
            later = EXACT_TAIL[EXACT_TAIL.index(chain[0]) + 1 :] if chain[0] in EXACT_TAIL else ()
            tail = [method for method in tail if method in later]
        chain += tail
    return list(dict.fromkeys(chain))
