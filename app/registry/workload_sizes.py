"""The reference workloads' sizes: the one list that the API, the command lines, the workers and the
benchmarks accept. Torch-free, so that the API can validate against it."""

from __future__ import annotations

from typing import Literal, get_args

# small: tests and quick benchmarks (seconds); full: the goals (tens of minutes and more).
WorkloadSize = Literal["small", "full"]
WORKLOAD_SIZES: tuple[str, ...] = get_args(WorkloadSize)
