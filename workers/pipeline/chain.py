"""Which methods a job tries, in order: the escalation chain.

A request names a method or `auto`; `auto` defers to the model's policy (`policy["method"]`), and a policy
`auto` picks by what the served version supports: DeepObliviate where the lineage kept block checkpoints,
LoRA residual alignment for pre-trained encoders, ∇τ otherwise. When the gate fails a candidate (or cannot
tell), the next method runs; the chain ends with an exact method (DeepObliviate without early stop, or
retraining) whenever the lineage's recipe is known, since an exact candidate is promoted on its utility.

Model policy keys read here: method, chain (an explicit list), method_config ({method: {...}}),
retrain_recipe (a TrainingRecipe dict, to retrain a model trained elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

AUTO = "auto"
DEEPOBLIVIATE = "deepobliviate"
RETRAIN = "retrain"
ENCODER_TASKS = frozenset({"sequence-classification"})


@dataclass(frozen=True)
class Capabilities:
    """What the lineage of the served version offers the methods."""

    task: str
    has_checkpoints: bool  # a training record with block checkpoints covers the served version
    has_recipe: bool  # a training record (or the policy) says how the lineage was trained


def is_exact(method: str, policy: Mapping[str, Any]) -> bool:
    config = method_config(policy, method)
    if method == RETRAIN:
        return True
    return method == DEEPOBLIVIATE and not config.get("early_stop", False)


def method_config(policy: Mapping[str, Any], method: str) -> dict[str, Any]:
    return dict((policy.get("method_config") or {}).get(method) or {})


def first_choice(capabilities: Capabilities) -> str:
    if capabilities.has_checkpoints:
        return DEEPOBLIVIATE
    if capabilities.task in ENCODER_TASKS:
        return "lora_residual_alignment"
    return "nabla_tau"


def exact_tail(capabilities: Capabilities) -> list[str]:
    tail = []
    if capabilities.has_checkpoints:
        tail.append(DEEPOBLIVIATE)
    if capabilities.has_recipe:
        # also behind DeepObliviate: a restart refused at run time (e.g. samples missing) can still retrain
        tail.append(RETRAIN)
    return tail


def choose_chain(requested: str, policy: Mapping[str, Any], capabilities: Capabilities) -> list[str]:
    """The methods to try in order, without repeats."""
    explicit = policy.get("chain")
    if explicit and requested == AUTO:
        chain = [str(name) for name in explicit]
    else:
        name = requested if requested != AUTO else str(policy.get("method") or AUTO)
        chain = [first_choice(capabilities) if name == AUTO else name]
        if not is_exact(chain[0], policy):
            chain += exact_tail(capabilities)
        elif chain[0] == DEEPOBLIVIATE and capabilities.has_recipe:
            chain.append(RETRAIN)
    return list(dict.fromkeys(chain))
