"""Residual memory (DeepObliviate): how far the retrained trajectory's updates are from the original's.

delta_k = ||(M_k - M_{k-1}) - (M'_k - M'_{k-1})||_1 per retrained block k, M the served version's block
checkpoints and M' the retrained trajectory, relative to the original block update ||M_k - M_{k-1}||_1. A
candidate that retrains blocks records it (`deepobliviate`'s per-block steps); after an early stop the
last value is the memory the stitched-on original updates still carry. Other methods leave no trajectory,
so the check says it was not run for them. Reported, not gated: measured on digits the residual did not
decay under a constant learning rate, so a threshold on it would be arbitrary.
"""

from __future__ import annotations

import time

from workers.unlearning.base import UnlearningResult
from workers.verification.checks import CheckResult


def check_residual(candidate: UnlearningResult) -> CheckResult:
    started = time.perf_counter()
    result = CheckResult("residual")
    trajectory = [s for s in candidate.steps if "residual_memory_relative" in s]
    if not trajectory:
        result.not_checked.append(f"residual memory ({candidate.method} records no retrained trajectory)")
        return result
    result.values["residual.blocks"] = [int(s["block"]) for s in trajectory]
    result.values["residual.relative"] = [float(s["residual_memory_relative"]) for s in trajectory]
    result.values["residual.absolute"] = [float(s["residual_memory"]) for s in trajectory]
    result.values["residual.last_relative"] = float(trajectory[-1]["residual_memory_relative"])
    result.values["residual.stitched"] = bool(candidate.details.get("stitched", False))
    if candidate.details.get("fit"):
        result.values["residual.fit"] = dict(candidate.details["fit"])
    result.seconds = time.perf_counter() - started
    return result
