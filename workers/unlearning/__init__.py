"""Unlearning methods, one module each, found by name through the registry in `base`.

Every method of app/registry/methods.py's `MethodName` lives in the module of its name here
(`workers/unlearning/<name>.py`, registered with `@register`); importing the package imports them all, so
`base.METHODS` is complete.
"""

import importlib

from app.registry.methods import MethodName
from workers.unlearning.base import (
    METHODS,
    MethodUnavailable,
    Provenance,
    UnlearningContext,
    UnlearningMethod,
    UnlearningResult,
    get_method,
    method_class,
    register,
    unlearn,
)

for _name in MethodName:
    importlib.import_module(f"{__name__}.{_name.value}")

__all__ = [
    "METHODS",
    "MethodUnavailable",
    "Provenance",
    "UnlearningContext",
    "UnlearningMethod",
    "UnlearningResult",
    "get_method",
    "method_class",
    "register",
    "unlearn",
]
