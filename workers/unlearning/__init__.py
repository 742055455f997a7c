"""Unlearning methods, one module each, found by name through the registry in `base`.

Importing the package imports every method module, so `base.METHODS` is complete.
"""

from workers.unlearning import (  # noqa: F401 - imported for their @register side effect
    deepobliviate,
    finetune,
    first_epoch_ascent,
    lora_residual_alignment,
    nabla_tau,
    retrain,
)
from workers.unlearning.base import (
    METHODS,
    MethodUnavailable,
    UnlearningContext,
    UnlearningMethod,
    UnlearningResult,
    get_method,
    register,
    unlearn,
)

__all__ = [
    "METHODS",
    "MethodUnavailable",
    "UnlearningContext",
    "UnlearningMethod",
    "UnlearningResult",
    "get_method",
    "register",
    "unlearn",
]
