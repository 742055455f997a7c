"""The methods the benchmarks compare, from the service's one list (app/registry/methods.py)."""

from __future__ import annotations

from app.registry.methods import BASELINES, MethodName

# The served model as its own candidate (the gate must refuse it): workers.verification.workload_case's
# UNTOUCHED, spelt again because importing that module imports torch, which `python -m bench` must not yet.
UNTOUCHED = "none"
REFERENCE = MethodName.RETRAIN.value  # runs first in every comparison: the denominator of the speedups
# Runs only on a model trained in shards: measured on the sharded layout of its own (bench.sharded).
SHARDED_ONLY = frozenset({MethodName.SISA})
# Every other method: the deletion methods, then the baselines.
COMPARED = tuple(
    sorted(
        (m.value for m in MethodName if m != MethodName.RETRAIN and m not in SHARDED_ONLY),
        key=lambda name: name in BASELINES,
    )
)
DELETION_METHODS = tuple(name for name in COMPARED if name not in BASELINES)
